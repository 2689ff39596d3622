# Variant OTA: the MicroPython image itself can be updated over the air too (otadata +
# ota_0/ota_1 and the bootloader's rollback), beside the library slots of the ROMFS partition.
file(WRITE ${CMAKE_BINARY_DIR}/sdkconfig.lanterne_partitions
    "CONFIG_PARTITION_TABLE_CUSTOM=y\nCONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions-ota-romfs.csv\"\n")

list(APPEND MICROPY_DEF_BOARD
    MICROPY_HW_BOARD_NAME="Lanterne ESP32 gateway with firmware OTA"
)
