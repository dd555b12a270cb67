"""Paper checks: every claim of arXiv 2605.12705 judged against saved results.

- :mod:`paper_checks.checks_theory` -- Appendix C theorems, assumption feasibility, errata.
- :mod:`paper_checks.checks_frontier`     -- frontier claims (a), (d), (e), used for both sides.
- :mod:`paper_checks.checks_lambda` -- the lambda studies (b) and (c1)-(c3), with (c)'s precondition.
- :mod:`paper_checks.checks_matched` -- claim (b) at matched L_im (and L_pre; LoRA arms).
- :mod:`paper_checks.checks_beyond`, :mod:`paper_checks.checks_items` -- what / where rows.
- :mod:`paper_checks.common`        -- settings and the fixed thresholds, with their reasons.
- :mod:`paper_checks.examples`      -- per-example test losses for the seed x document bootstrap.
- :mod:`paper_checks.calibration`   -- false-PASS rate and power at the measured noise.
- :mod:`early_exposure.stats`      -- (shared) t-intervals, t / sign-flip / TOST tests, Holm, bootstraps.
- :mod:`paper_checks.analyses`      -- sample-wise forgetting, layerwise change.
- :mod:`paper_checks.report`        -- report.json / report.md / verdicts.csv, Holm families, self-tests.
- :mod:`paper_checks.report_markdown` -- report.md: claim x side matrix, key figures, verdicts with evidence.
- :mod:`paper_checks.reproduce`     -- the one-command main job.
- :mod:`paper_checks.results_guide` -- RESULTS/README.md, a guide to every file of a results tree.

``python -m paper_checks --results DIR --out OUT``;
``python -m paper_checks reproduce --preset quick --out results/``.
"""

from paper_checks.checks_frontier import CheckOptions
from paper_checks.cli import build_report
from paper_checks.report import STATUSES

__all__ = ["CheckOptions", "build_report", "STATUSES"]
