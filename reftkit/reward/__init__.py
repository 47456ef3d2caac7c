"""Answers and their reward: extraction, normalisation and judging per answer kind; the P-CoT sandbox."""
