# Lanterne main.py: start the application (lib/lanterne). Ctrl-C drops to the REPL.
# On a battery (config/board file power=battery, docs/battery.md) one wake runs instead, then
# deep sleep: lanterne.wake.run() never returns.
import gc
import sys

import lanterne.power

if lanterne.power.battery():
    import lanterne.wake

    lanterne.wake.run()
del lanterne.power  # a mains board runs the app: the power check leaves the heap
sys.modules.pop("lanterne.power")
gc.collect()
import lanterne.app

lanterne.app.main()
