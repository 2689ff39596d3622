"""What a MicroPython user expects beside the firmware: `package.json` (for `mpremote mip install`),
the manifests for freezing (firmware/manifest.py, the Lanterne board's manifest.py), the board
definition (boards/micropython/LANTERNE_ESP32). `package_json()` is what package.json must say;

    python -m host_tools.fleet.release.artifacts          # rewrite package.json after adding a module
"""

from __future__ import annotations

import json
import sys

from host_tools.runtime.paths import FIRMWARE, REPO

PACKAGE_JSON = REPO / "package.json"
BOARD_DIR = REPO / "boards" / "micropython" / "LANTERNE_ESP32"


def package_json(version: str) -> dict:
    """Every library file, installed where the firmware expects it, relative to the repository."""
    urls = []
    for pkg, patterns in (("lanterne", ("*.py", "*.html")), ("lanterne_ota", ("*.py",))):
        for pattern in patterns:  # the modules, and the setup page the package serves
            for p in sorted((FIRMWARE / pkg).rglob(pattern)):
                urls.append([p.relative_to(FIRMWARE).as_posix(), p.relative_to(REPO).as_posix()])
    for p in sorted((FIRMWARE / "lib").rglob("*.py")):
        urls.append([p.relative_to(FIRMWARE / "lib").as_posix(), p.relative_to(REPO).as_posix()])
    return {"urls": urls, "deps": [["umqtt.simple", "latest"]], "version": version}


def main() -> int:
    from host_tools.fleet.deploy import firmware_version

    PACKAGE_JSON.write_text(json.dumps(package_json(firmware_version()), indent=2) + "\n")
    print(f"wrote {PACKAGE_JSON}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
