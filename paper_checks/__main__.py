"""``python -m paper_checks --results results/ --out results/report`` (see :mod:`paper_checks.cli`)."""

import sys

from paper_checks.cli import main

sys.exit(main())
