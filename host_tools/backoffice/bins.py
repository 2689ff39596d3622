"""Collection rounds: which bins to empty, when each will be full, and the trucks' rounds.

From the bridge's database (fill readings) and the fleet registry (locations):

1. **Fill trend.** For each bin, its readings of the last `history_h` hours. A fall of at least
   `EMPTIED_DROP` points from the level before (median of three readings) to the level after is an
   emptying (a lone spurious echo moves neither median); only the readings since the last
   one count (a bin emptied mid-trend does not pull its slope down). The slope is the Theil-Sen
   estimate (the median of pairwise slopes: one spurious ultrasonic echo does not tilt it), and
   the time to full is when that line reaches 100 % from the current level (the median of the
   last three readings). A bin that is not filling has none.
2. **Bins to collect**: at or over `threshold` %, or predicted to reach it within `within_h` hours.
3. **Rounds**: a capacitated vehicle-routing problem solved with Google OR-Tools: `trucks` trucks
   from `depot` (default: the bins' centroid), each emptying at most `capacity` bins' worth (a bin
   at 80 % takes 0.8), every bin to collect on exactly one round, total distance minimised
   (first solution by cheapest arc, then guided local search until `time_limit_s`).
   Distances are great-circle (haversine) between coordinates: the road network is out of scope
   (a road graph, e.g. OSRM's matrix, would replace `distance_matrix` and nothing else), so real
   rounds are longer, by about the city's detour factor, for both plans alike.
4. **Comparison**: the same trucks collecting *every* bin on a fixed round (the schedule without
   sensors, itself optimised the same way), against the planned rounds.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import time
from dataclasses import dataclass, field

EARTH_RADIUS_M = 6_371_008.8
EMPTIED_DROP = 30  # fill points lost between two readings: the bin was emptied


@dataclass
class Bin:
    device: str
    lat: float
    lon: float
    fill: int | None  # now, %
    observed_at: dt.datetime | None
    rate_per_h: float | None = None  # fill points per hour since the last emptying
    hours_to_full: float | None = None
    emptied_at: dt.datetime | None = None
    readings_used: int = 0


@dataclass
class Round:
    truck: int
    stops: list[str]
    distance_m: int
    load: float  # bins' worth


@dataclass
class Plan:
    bins: list[Bin]  # every bin known
    to_collect: list[Bin]
    rounds: list[Round]
    distance_m: int
    fixed_distance_m: int  # every bin on a fixed round
    fixed_trucks: int
    depot: tuple[float, float]
    solve_s: float
    status: str
    extras: dict = field(default_factory=dict)

    @property
    def saving(self) -> float:
        return 1 - self.distance_m / self.fixed_distance_m if self.fixed_distance_m else 0.0


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    (lat1, lon1), (lat2, lon2) = a, b
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def distance_matrix(points: list[tuple[float, float]]) -> list[list[int]]:
    """Metres between every pair of points (integers: the solver's arc costs)."""
    n = len(points)
    m = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            m[i][j] = m[j][i] = int(round(haversine_m(points[i], points[j])))
    return m


def theil_sen(points: list[tuple[float, float]], max_points: int = 120) -> float | None:
    """Median of pairwise slopes of (x, y) points (subsampled evenly to `max_points`)."""
    if len(points) > max_points:
        step = len(points) / max_points
        points = [points[int(i * step)] for i in range(max_points)]
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 != x1]
    return statistics.median(slopes) if slopes else None


def trend(b: Bin, history: list[tuple[dt.datetime, int]]) -> Bin:
    """Fill `b`'s rate and time to full from its (time, fill) readings, oldest first."""
    if not history:
        return b
    start = 0
    fills = [f for _, f in history]
    for i in range(1, len(fills)):
        # The level before (median of up to three readings) against the level after: one spurious
        # echo, high or low, moves neither median; a real emptying moves both.
        before = statistics.median(fills[max(0, i - 3):i])
        after = statistics.median(fills[i:i + 3])
        if before - after >= EMPTIED_DROP and fills[i - 1] - fills[i] >= EMPTIED_DROP / 2:
            start = i
            b.emptied_at = history[i][0]
    since = history[start:]
    b.readings_used = len(since)
    b.fill = int(statistics.median(f for _, f in since[-3:]))
    b.observed_at = since[-1][0]
    if len(since) < 3:
        return b
    t0 = since[0][0]
    rate = theil_sen([((t - t0).total_seconds() / 3600, f) for t, f in since])
    b.rate_per_h = rate
    if rate is not None and rate > 0:
        b.hours_to_full = max(0.0, (100 - b.fill) / rate)
    return b


def load_bins(db, directory, history_h: float = 72, now: dt.datetime | None = None) -> list[Bin]:
    """Every bin (a device whose board measures fill, with a location) and its trend."""
    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(hours=history_h)
    histories: dict[str, list] = {}
    for r in db.readings(since=since):
        if r.get("fill") is not None:
            histories.setdefault(r["device"], []).append((r["sampled_at"], r["fill"]))
    out = []
    for dev in directory.all():
        measures_fill = (dev.fields is not None and "fill" in dev.fields) or dev.id in histories
        if not measures_fill or not dev.has_location:
            continue
        out.append(trend(Bin(dev.id, dev.lat, dev.lon, None, None), histories.get(dev.id, [])))
    return out


def solve(points: list[tuple[float, float]], demands: list[int], trucks: int, capacity: int,
          time_limit_s: float) -> tuple[list[list[int]], list[int], str]:
    """CVRP over `points` (index 0 the depot): (node order per truck, distance per truck, status)."""
    from ortools.constraint_solver import pywrapcp, routing_enums_pb2

    dist = distance_matrix(points)
    manager = pywrapcp.RoutingIndexManager(len(points), trucks, 0)
    routing = pywrapcp.RoutingModel(manager)
    transit = routing.RegisterTransitCallback(lambda i, j: dist[manager.IndexToNode(i)][manager.IndexToNode(j)])
    routing.SetArcCostEvaluatorOfAllVehicles(transit)
    demand = routing.RegisterUnaryTransitCallback(lambda i: demands[manager.IndexToNode(i)])
    routing.AddDimensionWithVehicleCapacity(demand, 0, [capacity] * trucks, True, "load")
    params = pywrapcp.DefaultRoutingSearchParameters()
    params.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.PATH_CHEAPEST_ARC
    params.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
    params.time_limit.FromMilliseconds(max(100, int(time_limit_s * 1000)))
    solution = routing.SolveWithParameters(params)
    if solution is None:
        raise RuntimeError("the solver found no solution within the time limit: raise --time-limit or --trucks")
    routes, lengths = [], []
    for v in range(trucks):
        index, nodes, length = routing.Start(v), [], 0
        while not routing.IsEnd(index):
            nxt = solution.Value(routing.NextVar(index))
            length += dist[manager.IndexToNode(index)][manager.IndexToNode(nxt)]
            if manager.IndexToNode(index) != 0:
                nodes.append(manager.IndexToNode(index))
            index = nxt
        routes.append(nodes)
        lengths.append(length)
    names = dict(routing_enums_pb2.RoutingSearchStatus.Value.items())
    code = {v: k for k, v in names.items()}.get(routing.status(), str(routing.status()))
    status = {"ROUTING_SUCCESS": "solved", "ROUTING_OPTIMAL": "optimal",
              "ROUTING_PARTIAL_SUCCESS_LOCAL_OPTIMUM_NOT_REACHED": "best found within the time limit"}.get(code, code)
    return routes, lengths, status


def plan(bins: list[Bin], *, threshold: float = 80, within_h: float = 0, trucks: int = 1,
         capacity: float | None = None, depot: tuple[float, float] | None = None,
         time_limit_s: float = 10) -> Plan:
    """Rounds for the bins over `threshold` (or reaching it within `within_h` hours)."""
    if not bins:
        raise ValueError("no bins with a location and fill readings")
    if trucks < 1:
        raise ValueError("--trucks must be at least 1")
    depot = depot or (statistics.fmean(b.lat for b in bins), statistics.fmean(b.lon for b in bins))

    def due(b: Bin) -> bool:
        if b.fill is None:
            return False
        if b.fill >= threshold:
            return True
        return within_h > 0 and b.rate_per_h is not None and b.rate_per_h > 0 and \
            (threshold - b.fill) / b.rate_per_h <= within_h

    chosen = sorted((b for b in bins if due(b)), key=lambda b: b.device)

    def units(b: Bin) -> int:  # a bin's load in hundredths of a bin (at least 1)
        return max(1, int(round(b.fill or 0)))

    def cap_for(selection: list[Bin], n: int) -> int:
        if capacity is None:
            return sum(units(b) for b in selection) + 1
        return int(round(capacity * 100))

    t0 = time.monotonic()
    rounds, total, status = [], 0, "nothing to collect"
    if chosen:
        need = sum(units(b) for b in chosen)
        cap = cap_for(chosen, trucks)
        if need > cap * trucks:
            raise ValueError(f"{len(chosen)} bins ({need / 100:.1f} bins' worth) exceed {trucks} trucks × "
                             f"{cap / 100:g}: raise --trucks or --capacity")
        routes, lengths, status = solve([depot] + [(b.lat, b.lon) for b in chosen], [0] + [units(b) for b in chosen],
                                        trucks, cap, time_limit_s)
        for v, (nodes, length) in enumerate(zip(routes, lengths, strict=True)):
            if nodes:
                rounds.append(Round(v + 1, [chosen[n - 1].device for n in nodes], length,
                                    sum(units(chosen[n - 1]) for n in nodes) / 100))
        total = sum(lengths)
    solve_s = time.monotonic() - t0
    # Without sensors: every bin, on a fixed round, by as many trucks as its load needs.
    everyone = sorted((b for b in bins if b.fill is not None), key=lambda b: b.device) or list(bins)
    cap_all = cap_for(everyone, trucks)
    fixed_trucks = max(trucks, math.ceil(sum(units(b) for b in everyone) / cap_all))
    _r, fixed_lengths, _s = solve([depot] + [(b.lat, b.lon) for b in everyone], [0] + [units(b) for b in everyone],
                                  fixed_trucks, cap_all, time_limit_s)
    return Plan(bins, chosen, rounds, total, sum(fixed_lengths), fixed_trucks, depot, solve_s, status)


def geojson(p: Plan) -> dict:
    """A FeatureCollection any map shows: the depot, every bin (fill, time to full, round), each round's line."""
    where = {b.device: b for b in p.bins}
    order = {d: (r.truck, i + 1) for r in p.rounds for i, d in enumerate(r.stops)}
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.depot[1], p.depot[0]]},
                 "properties": {"kind": "depot", "marker-symbol": "warehouse"}}]
    for b in p.bins:
        truck, stop = order.get(b.device, (None, None))
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [b.lon, b.lat]},
                         "properties": {"kind": "bin", "device": b.device, "fill": b.fill,
                                        "hours_to_full": None if b.hours_to_full is None else round(b.hours_to_full, 1),
                                        "collect": truck is not None, "round": truck, "stop": stop,
                                        "marker-color": "#d62728" if truck else "#2ca02c"}})
    for r in p.rounds:
        line = [[p.depot[1], p.depot[0]]] + [[where[d].lon, where[d].lat] for d in r.stops] + [[p.depot[1], p.depot[0]]]
        features.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": line},
                         "properties": {"kind": "round", "round": r.truck, "stops": len(r.stops),
                                        "distance_km": round(r.distance_m / 1000, 2), "load_bins": r.load}})
    return {"type": "FeatureCollection", "features": features}


def as_json(p: Plan) -> dict:
    return {
        "threshold_bins": [{"device": b.device, "fill": b.fill, "lat": b.lat, "lon": b.lon,
                            "rate_per_h": None if b.rate_per_h is None else round(b.rate_per_h, 3),
                            "hours_to_full": None if b.hours_to_full is None else round(b.hours_to_full, 2),
                            "emptied_at": b.emptied_at.isoformat() if b.emptied_at else None}
                           for b in p.to_collect],
        "rounds": [{"truck": r.truck, "stops": r.stops, "distance_m": r.distance_m, "load_bins": r.load}
                   for r in p.rounds],
        "distance_m": p.distance_m, "fixed_round_distance_m": p.fixed_distance_m, "fixed_round_trucks": p.fixed_trucks,
        "saving": round(p.saving, 4), "bins": len(p.bins), "to_collect": len(p.to_collect),
        "depot": list(p.depot), "solve_s": round(p.solve_s, 2), "status": p.status,
        "distances": "great-circle (haversine); no road network",
    }
