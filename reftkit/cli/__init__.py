"""The command line: argument parsing and wiring only (``reftkit``, ``python -m reftkit.cli``)."""
