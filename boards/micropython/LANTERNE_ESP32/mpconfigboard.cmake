# Lanterne ESP32 gateway (see board.md): ESP32_GENERIC's settings, -Os and the bootloader's
# rollback (sdkconfig.board), Lanterne's partition table, and the OTA package frozen
# (manifest.py). Built out of MicroPython's tree: make BOARD_DIR=<this folder>.
include(boards/mpconfigboard_esp32_common.cmake)

# ESP-IDF takes the partition table's path from the sdkconfig, relative to the port's folder or
# absolute: written at configure time with this folder's absolute path.
if(NOT LANTERNE_PARTITIONS)
    set(LANTERNE_PARTITIONS partitions-romfs.csv)
endif()
file(WRITE ${CMAKE_BINARY_DIR}/sdkconfig.lanterne_partitions
    "CONFIG_PARTITION_TABLE_CUSTOM=y\nCONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/${LANTERNE_PARTITIONS}\"\n")

list(APPEND SDKCONFIG_DEFAULTS
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${CMAKE_BINARY_DIR}/sdkconfig.lanterne_partitions
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
