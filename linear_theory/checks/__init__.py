"""Numerical checks of Appendix C against references independent of the simulator.

Modules: :mod:`~linear_theory.checks.theorems` (Theorems C.9-C.17, Saxe et al. 2014, basis
invariance: the body of ``theorems.json``), :mod:`~linear_theory.checks.errata` (the errata
the checks and the assumption analysis expose) and :mod:`~linear_theory.checks.assumptions`
(assumption verdicts, joint feasibility, the smallest relaxation: ``assumptions.json``).
The command line is in :mod:`linear_theory.cli`.
"""
