# Lanterne over-the-air updates: the part of the firmware that lives on the filesystem, outside
# the two library slots, so that no release can break it (docs/ota.md):
#   boot      the boot selector boot.py runs: slot state, hash check, trial, rollback, mount
#   state     the slot state (NVS), the ROMFS partition's two slots, trusted keys, atomic files
#   manifest  the signed release manifest (format shared with the host, which builds it)
#   ed25519   signature verification (RFC 8032), SHA-512 included
#   delta     rebuilding a block of the new image from the running slot's bytes and literals
#   updater   the transfer: fetch, verify and write the inactive slot, resumable, throttled
#   start     what main.py calls when the application cannot start or crashes
#   safe      safe mode: MQTT and updates only, when no release runs
# Nothing here is imported in normal operation: only at boot, during an update or in safe mode.

DIR = "ota"  # on the filesystem: keys, the pending manifest, the transfer job
KEYS_FILE = "ota/keys.json"  # trusted Ed25519 public keys (hex), installed by provisioning
MANIFEST_FILE = "ota/pending.man"  # the verified manifest of the update under way
JOB_FILE = "ota/job.json"  # the transfer under way: what to fetch, where to write it
BLOCK = 4096  # flash erase block = transfer block = manifest hash granularity
