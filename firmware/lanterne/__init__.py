"""Lanterne firmware: street-asset gateway application for MicroPython (ESP32)."""

__version__ = "0.1.0"
