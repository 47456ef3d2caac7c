"""Processes and the outside world: several processes (distributed.py), Ctrl-C and SIGTERM during training
(interrupt.py), experiment trackers (trackers.py).

distributed.py and interrupt.py import nothing of reftkit above them; trackers.py imports config.
"""
