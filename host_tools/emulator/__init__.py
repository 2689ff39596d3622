"""The virtual board: the MicroPython unix port on a pty, HAL shims, a simulated world, fault injection."""
