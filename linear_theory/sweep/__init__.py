"""Vectorised, chunked, resumable sweeps of the three-stage simulation over any config fields.

Modules: :mod:`~linear_theory.sweep.grid` (``--grid FIELD=SPEC`` axes), :mod:`~linear_theory.sweep.plan`
(groups, chunks, plan hash), :mod:`~linear_theory.sweep.kernels` (batched GD, independent of
:func:`linear_theory.simulate.simulate`), :mod:`~linear_theory.sweep.engine` (one chunk through the
kernels; :func:`~linear_theory.sweep.engine.sweep_frame` in memory), :mod:`~linear_theory.sweep.rows`
(the tidy row columns), :mod:`~linear_theory.sweep.flags` (closed-form assumption flags),
:mod:`~linear_theory.sweep.files` (resumable chunk files, shards, merge) and
:mod:`~linear_theory.sweep.plots` (heatmaps). The command line is in :mod:`linear_theory.cli`.
"""
