"""Causal LMs: loading and checking model folders, the tiny preset (loading.py); LoRA, gradient checkpointing,
merged saves (trainable.py); the policy with its value head and the KL reference (policy.py); GGUF import (gguf.py).

Imports reftkit.config only.
"""
