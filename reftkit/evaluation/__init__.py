"""Greedy accuracy, sampled completions, voting / pass@k / reranking, results tables and plots."""
