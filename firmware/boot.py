# Lanterne boot.py: runs first at every boot. Kept thin; the application starts in main.py.
import gc

gc.collect()
