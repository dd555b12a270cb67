"""Regenerate the paper's figures from saved results (never trains).

``python -m figures all --results results/ --out results/figures`` writes PNG + PDF:
Figure 2 (both frontier views), 3a/3b (lambda studies), 4-6 (replay, dropout), 7 (LoRA),
theory spectra, the alpha x beta phase diagram, and theory-vs-LM frontiers.
"""
