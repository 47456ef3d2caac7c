"""The command line: argument parsing (parser.py), input checks and dispatch (main.py), the ``reftkit data``
commands (data.py), the accelerate launcher (launch.py); ``python -m reftkit.cli`` runs main.

May import every layer below it; heavy modules are imported once a command is known to be good.
"""
