"""Processes and devices (accelerate), experiment trackers."""
