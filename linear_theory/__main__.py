"""``python -m linear_theory {run,assumptions,verify,sweep,...}`` (see :mod:`linear_theory.cli`)."""

import sys

from linear_theory.cli import main

if __name__ == "__main__":
    sys.exit(main())
