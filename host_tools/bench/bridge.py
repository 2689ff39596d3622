"""`lanterne bench bridge`: readings per second through the back-office bridge, SQLite and PostgreSQL.

What is timed is the bridge's own work on each uplink: decode the frame, give each reading its
full seq and its sampling time, check the device, de-duplicate, and write in batched
transactions (1 000 frames each, as `lanterne bridge` commits), the same `Ingestor` the MQTT
side feeds. The workload: N street lights each sending frames of 24 readings (the backlog batches
a board sends after an outage, which is when a city's bridge sees its peak), 5 % of the frames
delivered twice (QoS 1 redeliveries), and the same with one reading per frame (live traffic).

- `readings_per_s_sqlite` / `_postgresql`: new readings stored per second of the bridge
  process's CPU time (one core; on this shared 2-core machine wall time also measures the other
  sessions' load: `*_wall` are given beside). PostgreSQL runs as a real local server (durable,
  default settings); its own CPU is on the other core (`postgresql_server_cpu_s` beside).
- `readings_per_s`: the lower of the two engines, the figure the target (≥ 20 000) is about.
- `readings_per_s_2_instances`: two bridge processes, each taking every other frame (as a
  shared subscription deals them) and each redelivered frame going to the other one, writing
  into one PostgreSQL: new readings per wall-clock second, both together (2 cores shared by the
  two bridges and the server).
- `ngsi_entities_per_s`: NGSI-LD entities built from the database (latest reading per device,
  registry location) and serialised to JSON, per second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from host_tools.bench import BenchResult

FRAME_READINGS = 24
BATCH_FRAMES = 1000
DUPLICATE_EVERY = 20  # 5 % of the frames come twice


def _frames(n_frames: int, per_frame: int) -> list[bytes]:
    from host_tools.codec import encode_values

    out = []
    for f in range(n_frames):
        readings = [{"temperature": 12.0 + (i % 7) * 0.1, "humidity": 61.0, "pressure": 1009.5, "illuminance": 3.0,
                     "lamp": 60, "lamp_fault": False, "voltage": 12.2, "status": [], "seq": f * per_frame + i,
                     "age": (per_frame - i) * 600 + 2} for i in range(per_frame)]
        (frame,) = encode_values(readings, budget=1024, runtime="cpython")
        out.append(frame["frame"])
    return out


def _workload(devices: int, frames_per_device: int, per_frame: int) -> list[tuple[str, bytes]]:
    frames = _frames(frames_per_device, per_frame)
    stream = []
    for f in range(frames_per_device):
        for d in range(devices):
            stream.append((f"lamp-{d:05d}", frames[f]))
    with_dups = []
    for i, item in enumerate(stream):
        with_dups.append(item)
        if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:
            with_dups.append(stream[i - 7])  # a frame delivered again, a little later
    return with_dups


def _directory(devices: int):
    from host_tools.backoffice.bridge.devices import Device, Directory, board_parts

    parts, fields = board_parts("esp32-devkitc")
    return Directory.of([Device(f"lamp-{d:05d}", "bench", "esp32-devkitc", 45.75 + d * 1e-4, 4.85, fields, parts,
                                None, {}) for d in range(devices)])


def ingest_stream(url: str, stream: list[tuple[str, bytes]], devices: int, before_close=None) -> dict:
    """Run the bridge's ingest over `stream` into `url`; CPU and wall seconds, readings written."""
    from host_tools.backoffice.bridge.database import Database
    from host_tools.backoffice.bridge.ingest import Ingestor

    db = Database(url)
    ingest = Ingestor(db, _directory(devices))
    written = duplicates = 0
    now = time.time()
    w0, c0 = time.perf_counter(), time.process_time()
    start_wall = time.time()
    for i, (device, frame) in enumerate(stream):
        ingest.uplink(device, frame, now, site="bench")
        if i % BATCH_FRAMES == BATCH_FRAMES - 1:
            done = ingest.flush()
            written, duplicates = written + done.written, duplicates + done.duplicates
    done = ingest.flush()
    if done:
        written, duplicates = written + done.written, duplicates + done.duplicates
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    extra = before_close() if before_close else None  # the server's CPU, while its backend still lives
    db.close()
    return {"extra": extra, "written": written, "duplicates": duplicates, "cpu_s": cpu, "wall_s": wall, "start": start_wall,
            "end": start_wall + wall}


def _server_cpu(pg) -> float:
    """CPU seconds used so far by every process of the PostgreSQL server (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pid_file = pg.data / "postmaster.pid"
    main = int(pid_file.read_text().split()[0])
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == main:  # its own time, and that of its children that have exited (closed connections)
            total += sum(int(v) for v in stat[11:15]) / tick
        elif int(stat[1]) == main:  # live children: backends, writer, WAL writer, checkpointer
            total += (int(stat[11]) + int(stat[12])) / tick
    return total


def _worker(url: str, k: int, devices: int, frames_per_device: int) -> None:
    stream = _workload(devices, frames_per_device, FRAME_READINGS)
    mine = [item for i, item in enumerate(stream) if i % 2 == k]
    print(json.dumps(ingest_stream(url, mine, devices)), flush=True)


def _entities_per_s(url: str, devices: int) -> tuple[float, int]:
    from host_tools.backoffice.bridge.database import Database
    from host_tools.backoffice.bridge.ngsi import entities

    db = Database(url, migrate=False)
    directory = _directory(devices)
    t0 = time.perf_counter()
    latest = db.latest_readings()
    states = db.states()
    out = []
    for dev in directory.all():
        out.extend(entities(dev, latest.get(dev.id), (states.get(dev.id) or {}).get("status")))
    body = json.dumps(out)
    dt = time.perf_counter() - t0
    db.close()
    assert len(body) > 0
    return len(out) / dt, len(out)


def run(quick: bool = False) -> BenchResult:
    import tempfile

    from host_tools.backoffice.postgres import PostgresServer

    devices, per_device = (300, 5) if quick else (1000, 12)
    batched = _workload(devices, per_device, FRAME_READINGS)
    single = _workload(devices, per_device * 4 if quick else per_device * 6, 1)
    rows, metrics = [], {}
    with tempfile.TemporaryDirectory(prefix="lanterne-bench-bridge-") as tmp, PostgresServer(durable=True) as pg:
        for engine in ("sqlite", "postgresql"):
            for label, stream in (("24 readings per frame", batched), ("1 reading per frame", single)):
                url = os.path.join(tmp, f"{engine}-{len(rows)}.sqlite") if engine == "sqlite" else \
                    pg.create_database(f"bench_{len(rows)}")
                server0 = _server_cpu(pg) if engine == "postgresql" else 0.0
                r = ingest_stream(url, stream, devices, (lambda: _server_cpu(pg)) if engine == "postgresql" else None)
                server = r["extra"] - server0 if engine == "postgresql" else None
                per_cpu, per_wall = r["written"] / r["cpu_s"], r["written"] / r["wall_s"]
                rows.append([engine, label, r["written"], r["duplicates"], round(per_cpu), round(per_wall),
                             "-" if server is None else f"{server:.2f}"])
                suffix = engine if label.startswith("24") else f"{engine}_single"
                metrics[f"readings_per_s_{suffix}"] = round(per_cpu)
                metrics[f"readings_per_s_{suffix}_wall"] = round(per_wall)
                if server is not None and label.startswith("24"):
                    metrics["postgresql_server_cpu_s"] = round(server, 2)
                    metrics["postgresql_server_cpu_per_reading_us"] = round(server / r["written"] * 1e6, 1)
                if label.startswith("24") and engine == "postgresql":
                    ngsi_url = url
        metrics["readings_per_s"] = min(metrics["readings_per_s_sqlite"], metrics["readings_per_s_postgresql"])
        # Two instances, one PostgreSQL.
        url = pg.create_database("bench_two")
        from host_tools.backoffice.bridge.database import Database

        Database(url).close()  # migrated once, before both start
        procs = [subprocess.Popen([sys.executable, "-m", "host_tools.bench.bridge", url, str(k), str(devices),
                                   str(per_device)], stdout=subprocess.PIPE, text=True) for k in (0, 1)]
        outs = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]
        total = sum(o["written"] for o in outs)
        span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        expected = devices * per_device * FRAME_READINGS
        metrics["readings_per_s_2_instances"] = round(total / span)
        metrics["readings_2_instances_exactly_once"] = total == expected and Database(url).count("readings") == expected
        rows.append(["postgresql", "2 instances, 24 per frame", total, sum(o["duplicates"] for o in outs), "-",
                     round(total / span), "-"])
        eps, n_entities = _entities_per_s(ngsi_url, devices)
        metrics["ngsi_entities_per_s"] = round(eps)
    return BenchResult(
        metrics=metrics,
        tables=[("bridge ingest: decode + seq + de-duplication + batched write",
                 ["engine", "frames", "readings written", "duplicates dropped", "readings/s (CPU)", "readings/s (wall)",
                  "server CPU s"], rows)],
        notes=[f"{devices} street lights, {DUPLICATE_EVERY and 100 // DUPLICATE_EVERY} % of frames delivered twice; "
               f"transactions of {BATCH_FRAMES} frames; {n_entities} NGSI-LD entities built from the database; "
               "readings/s (CPU) is per second of the bridge process's CPU time (one core)"],
    )


if __name__ == "__main__":  # a second bridge instance for readings_per_s_2_instances
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
