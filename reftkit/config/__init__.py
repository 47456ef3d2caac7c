"""Typed run configuration: dataclasses, presets, loading and validation."""
