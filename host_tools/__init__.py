"""Lanterne host tools: emulate, flash, provision, command, monitor, decode and benchmark boards."""

__version__ = "0.1.0"
