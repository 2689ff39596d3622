// Lanterne ESP32 gateway: MicroPython's generic ESP32 build with a ROMFS partition (the library
// runs in place from two A/B slots in it) and the OTA package frozen (boot selector, signature
// check, updater, safe mode). See board.md for the build.

#ifndef MICROPY_HW_BOARD_NAME
#define MICROPY_HW_BOARD_NAME "Lanterne ESP32 gateway"
#endif

#define MICROPY_HW_MCU_NAME "ESP32"

// Mount the ROMFS partition at /rom (vfs.rom_ioctl gives the partition to the boot selector).
#define MICROPY_VFS_ROM (1)
