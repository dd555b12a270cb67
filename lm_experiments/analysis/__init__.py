"""Analyses of finished runs beyond the paper: what is forgotten and where (docs/whatwhere.md).

- :mod:`~lm_experiments.analysis.items`              -- evaluable items, transitions, chance adjustment.
- :mod:`~lm_experiments.analysis.results`            -- opening an LM results directory for an analysis (through the run tree).
- :mod:`~lm_experiments.analysis.whatwhere`          -- the what / where analysis and its CLI.
- :mod:`~lm_experiments.analysis.whatwhere_tables`   -- per-seed tables and summaries over seeds.
- :mod:`~lm_experiments.analysis.whatwhere_rollback` -- layer rollback, update norms and overlaps.

Imports the protocol, the engine, the config and the data layer; not the runner.
"""
