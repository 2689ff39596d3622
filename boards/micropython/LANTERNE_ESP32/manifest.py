# The Lanterne image: MicroPython's default frozen modules for the esp32 port, and Lanterne's OTA
# package (boot selector, Ed25519 verifier, updater, safe mode), frozen so that no release in the
# library slots can break it, and so that it takes no heap for its code and interns no new names.
include("$(PORT_DIR)/boards/manifest.py")
package("lanterne_ota", base_path="$(BOARD_DIR)/../../../firmware")
