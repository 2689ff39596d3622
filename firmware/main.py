# Lanterne main.py: start the application (lib/lanterne). Ctrl-C drops to the REPL.
# On a battery (config/board file power=battery, docs/battery.md) one wake runs instead, then
# deep sleep: lanterne.wake.run() never returns.
import sys

import lanterne.wake

if lanterne.wake.battery():
    lanterne.wake.run()
del lanterne.wake  # a mains board runs the app: the wake code leaves the heap
sys.modules.pop("lanterne.wake")
import lanterne.app

lanterne.app.main()
