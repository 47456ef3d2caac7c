"""Sampling completions from a policy: the rollout engines and their generation settings."""
