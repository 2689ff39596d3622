"""Shared fixtures: the unix-port runner, virtual boards, brokers."""

from __future__ import annotations

import pytest

from host_tools import upy


@pytest.fixture(scope="session")
def micropython():
    """Run a script on the MicroPython unix port: `micropython(code, heapsize=...) -> stdout`."""
    return upy.run
