"""The RL maths as pure tensor functions with hand-computed tests: KL, GAE, whitening, the registry of advantage
estimators (``ESTIMATORS``), loss aggregation, clipped policy and value losses.

Imports nothing of reftkit.
"""
