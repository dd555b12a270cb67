"""The training engine: everything that touches tensors, and nothing about the protocol.

- :mod:`~lm_experiments.engine.model`       -- model presets (SmolLM2-style ``LlamaForCausalLM``), dropout, LoRA, FLOPs.
- :mod:`~lm_experiments.engine.train`       -- the one training loop of every stage (early stopping, resumable state).
- :mod:`~lm_experiments.engine.optim`       -- AdamW with warmup + cosine.
- :mod:`~lm_experiments.engine.losses`      -- next-token cross-entropy: plain, chunked, fused.
- :mod:`~lm_experiments.engine.evaluate`    -- held-out losses, checkpoints, layer-wise change.
- :mod:`~lm_experiments.engine.checkpoints` -- loading saved models, model cards, the checkpoint index.
- :mod:`~lm_experiments.engine.device`      -- device and mixed-precision policy.
- :mod:`~lm_experiments.engine.distributed` -- one run over several processes (torchrun + DDP).

Imports :mod:`lm_experiments.config`, :mod:`lm_experiments.data` and :mod:`early_exposure`
only; the engine trusts the config sections it is given (they validated themselves).
"""
