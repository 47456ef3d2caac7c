"""Loading, building and saving causal LMs (tiny, HF, LoRA, value head); GGUF import."""
