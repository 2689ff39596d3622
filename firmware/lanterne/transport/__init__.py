# Lanterne transports: how readings leave the board (mqtt over IP, lorawan over an AT modem).
