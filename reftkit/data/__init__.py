"""Tasks: the registry, loaders, the synthetic generator, records and their validation."""
