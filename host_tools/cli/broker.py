"""`lanterne broker [--port N]`: an embedded MQTT broker (amqtt) on loopback, for demos and quick runs.

For anything real, point the other commands at Mosquitto (or an EMQX/VerneMQ/HiveMQ
cluster) with `--broker mqtt://host:port`.
"""

from __future__ import annotations

import threading

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--port", type=int, default=1883, help="TCP port on 127.0.0.1 (default 1883)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")


def run(args):
    from host_tools.backoffice.brokers import BrokerError, EmbeddedBroker

    try:
        broker = EmbeddedBroker(port=args.port, host=args.host).start()
    except (BrokerError, OSError) as exc:
        raise CommandError(f"cannot start the broker on {args.host}:{args.port}: {exc}", hint="is the port in use? try --port") from None
    print(f"embedded MQTT broker on {broker.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0
