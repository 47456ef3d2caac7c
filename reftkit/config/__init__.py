"""Typed run configuration: the documented dataclasses with their Literal choices (schema.py); presets, YAML,
``key=value`` overrides, validation, resume and ``config show`` (loading.py); the preset files (presets/).

Imports reftkit.reward.kinds (answer kinds) and reftkit.rl (estimator names) only.
"""
