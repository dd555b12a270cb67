"""``python -m lm_experiments run --config configs/lm/cpu-quick.yaml --out results/lm/cpu-quick``

See :mod:`lm_experiments.cli` for the options.
"""

import sys

from lm_experiments.cli import run

sys.exit(run())
