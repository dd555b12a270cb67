"""Paper checks: every claim of arXiv 2605.12705 judged against saved results.

- :mod:`paper_checks.checks_theory` -- Appendix C theorems, assumption feasibility, errata.
- :mod:`paper_checks.checks_frontier`     -- frontier claims (a)-(e), used for both sides.
- :mod:`early_exposure.stats`      -- (shared) Student-t intervals and sign-flip tests over seeds.
- :mod:`paper_checks.analyses`      -- sample-wise forgetting, layerwise change.
- :mod:`paper_checks.report`        -- report.json / report.md / the verdict table.
- :mod:`paper_checks.reproduce`     -- the one-command main job.

``python -m paper_checks --results DIR --out OUT``;
``python -m paper_checks reproduce --preset quick --out results/``.
"""

from paper_checks.checks_frontier import CheckOptions
from paper_checks.cli import build_report
from paper_checks.report import STATUSES

__all__ = ["CheckOptions", "build_report", "STATUSES"]
