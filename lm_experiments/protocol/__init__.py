"""The paper's three-stage protocol: what each run is and how a stage trains it.

- :mod:`~lm_experiments.protocol.plan`       -- run records (``PreRun``/``PostRun``/``FtRun``/``TrajRun``), keys, budgets.
- :mod:`~lm_experiments.protocol.schedules`  -- batch plans: mixing, replay, compute-matched split, fine-tuning stream.
- :mod:`~lm_experiments.protocol.context`    -- ``StageContext`` (config, data, device, the run tree), ``StageResult``.
- :mod:`~lm_experiments.protocol.stages`     -- ``run_pre``, ``run_post``, ``run_ft`` and ``STAGE_FUNCTIONS``.
- :mod:`~lm_experiments.protocol.trajectory` -- ``run_traj``: the matched-L_im study's fine-tuned stage-2 checkpoints.
- :mod:`~lm_experiments.protocol.tables`     -- the frontier and matched tables of a plan.

Imports the engine, the config, the data layer and :mod:`early_exposure` (every path of a
results directory comes from :class:`early_exposure.runs.RunTree`).
"""
