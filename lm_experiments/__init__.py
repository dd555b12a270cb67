"""Language-model half of the reproduction: the paper's three-stage protocol (Sec. 3-4).

Kept light on purpose: importing the package does not import torch or transformers.
Modules: ``device`` (device/precision policy), ``model`` (presets, dropout, LoRA),
``train`` (AdamW + warmup/cosine, early stopping, resumable checkpoints), ``evaluate``
(token cross-entropy, checkpoints, layer-wise change), ``data`` (corpora, tokenizer),
``config``/``pipeline``/``cli`` (the three-stage runs).
"""
