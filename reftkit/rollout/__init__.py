"""Sampling completions from a policy: one RolloutEngine interface and GenerationConfig (base.py), the engine
factory (engines.py), the sampling loop with the HF forward (generate.py), the lean KV-cache decoder (lean.py), vLLM
(vllm_engine.py). A new engine is one new file.

Imports reftkit.models, reftkit.data (prompt formats), reftkit.config and reftkit.runtime.distributed.
"""
