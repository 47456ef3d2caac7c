"""What a model is worth: greedy accuracy and vote@k / pass@k / rerank@k (accuracy.py), samples files
(sampling.py), every markdown table (report.py), ``reftkit results`` (results.py), plots (plots.py).

Imports rollout, data, reward, models, config, runtime; never trainers.
"""
