"""Language-model half of the reproduction: the paper's three-stage protocol (Secs. 3-4).

Subpackages by responsibility; imports run one way, bottom up (``tests/test_import_layers.py``,
docs/INTERFACES.md "Layers"):

- :mod:`lm_experiments.data`     -- corpora (embedded, local, Hugging Face), tokenizer, split, packing, cache.
- :mod:`lm_experiments.config`   -- the pipeline config: one self-validating section each, post axes, presets.
- :mod:`lm_experiments.engine`   -- model, training loop, optimizer, losses, evaluation, checkpoints, devices, DDP.
- :mod:`lm_experiments.protocol` -- run records and plan, batch schedules, the stage functions, their tables.
- :mod:`lm_experiments.runner`   -- ``run_pipeline``, the serial and Ray executors, one unit, the torchrun launcher.
- :mod:`lm_experiments.analysis` -- what is forgotten and where (items, transitions, layer rollback).
- :mod:`lm_experiments.cli`      -- ``python -m lm_experiments run``.

Kept light on purpose: importing the package does not import torch or transformers.
"""
