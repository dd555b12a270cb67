"""Theory analogues of the paper's studies, built on the simulator and the sweep engine.

Modules: :mod:`~linear_theory.studies.frontier` (the ``side=theory`` frontier table:
methods x post-training grid x fine-tuning grid, exact losses), :mod:`~linear_theory.studies.finite`
(finite D_post: seeded minibatch SGD with sampled dropout, exact evaluation) and
:mod:`~linear_theory.studies.compute_matched` (Sections 4.1 / 4.2 on finite samples).
The command line is in :mod:`linear_theory.cli`.
"""
