"""Answers and their reward: one registry of answer kinds (kinds.py: numeric, mcq, math), what each reads
(numbers.py, choices.py, latex.py, programs.py), grading and the reward table (answers.py), and the sandbox that
runs model-written programs (sandbox.py).

Imports nothing of reftkit but reftkit.runtime.distributed (grading shares rows across processes).
"""
