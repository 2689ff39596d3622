"""The back-office bridge: uplinks in, the city's data out (docs/bridge.md).

Modules: `schema` (tables and migrations), `database` (SQLite / PostgreSQL), `ingest`
(decode, sampling times, seq, checks, batches), `mqtt_input` (the broker side), `service`
(the running bridge), `ngsi` / `ngsi_api` / `ngsi_push` (FIWARE Smart Data Models in
NGSI-LD), `homeassistant` (MQTT discovery and commands), `export` (open data).
"""
