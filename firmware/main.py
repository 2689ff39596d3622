# Lanterne main.py: start the application (lib/lanterne). Ctrl-C drops to the REPL.
import lanterne.app

lanterne.app.main()
