# Lanterne's firmware as MicroPython packages (MicroPython's manifest format, as micropython-lib's
# packages have), for a MicroPython image that freezes them:
#   the library (`lanterne`) and its compatibility module (`ussl`), with umqtt.simple;
#   the OTA package (`lanterne_ota`), which the Lanterne image always freezes
#   (boards/micropython/LANTERNE_ESP32/manifest.py).
# Freezing the library puts it in the MicroPython image: it is then updated with the image, not
# over the air in the ROMFS slots (docs/ota.md). Frozen modules carry no data files: the setup
# page (lanterne/*.html) stays in a ROMFS image or on the filesystem. Use it from a board's manifest:
#   include("<path to lanterne>/firmware/manifest.py")
metadata(description="Lanterne: street-asset gateway firmware (sensors, store-and-forward, MQTT, commands, OTA)", version="0.1.0")

require("umqtt.simple")
package("lanterne")
package("lanterne_ota")
module("ussl.py", base_path="lib")
