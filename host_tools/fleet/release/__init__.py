"""Releases for over-the-air updates (docs/ota.md): what the host builds and signs.

- `keys`: the fleet's Ed25519 signing keys, kept on the host (owner-only files), rotation;
- `build`: a release from a firmware tree: compiled library, ROMFS slot image, signed manifest;
- `store`: the release folder (./releases): releases by version and counter, images by hash;
- `delta`: per-block recipes that rebuild a new image from the one a board runs.

The manifest format is the firmware's own (`lanterne_ota.manifest`, imported with `ota_module`),
so the host and the board cannot disagree on it. Pushing releases to boards over MQTT is the
back office's (`host_tools.backoffice.ota_server`, `host_tools.backoffice.rollout`).
"""

from __future__ import annotations

import importlib
import sys

from host_tools.runtime.paths import FIRMWARE


class ReleaseError(ValueError):
    """A release cannot be built, signed, found or pushed: one line, and what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def ota_module(name: str):
    """A module of the firmware's OTA package (`lanterne_ota.<name>`) on CPython."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(f"lanterne_ota.{name}")
