"""``python -m early_exposure`` = the ``early-exposure`` command (:mod:`early_exposure.cli`)."""

import sys

from early_exposure.cli import main

sys.exit(main())
