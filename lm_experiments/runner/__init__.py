"""Running a plan: the pipeline entry, the executors, one unit of work, the torchrun launcher.

- :mod:`~lm_experiments.runner.pipeline`  -- ``run_pipeline`` (validate, prepare, plan, run, write tables), ``run_sweep``.
- :mod:`~lm_experiments.runner.executors` -- the serial and Ray executors (every run a task, failures recorded).
- :mod:`~lm_experiments.runner.unit`      -- the one function that runs a unit under its lock (``run_unit``, ``run_locked``).
- :mod:`~lm_experiments.runner.launch`    -- one unit over several processes (``torchrun -m lm_experiments.runner.launch``).

Imports the protocol and everything below it; nothing imports the runner but the CLI.
"""
