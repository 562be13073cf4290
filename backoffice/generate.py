"""A back office database of a chain's history, built directly (not through MQTT), for query benchmarks.

``python -m backoffice.generate --db URL --days 30 --stores 100 --lanes 10`` fills ``devices``,
``epochs`` (one per lane and day, as a daily restart gives), ``hourly`` and ``site_hourly`` (every hour
of the last ``days`` days through the end of today, a lane's products per hour drawn around a daily
curve) and a few spans (one lane in fifty lost counts messages once). Deterministic for a seed.
PostgreSQL gets ``COPY``; SQLite ``executemany``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, func, select

from backoffice import tables as t
from backoffice.db import make_engine, migrate

__all__ = ["generate"]

CLASSES = ["apple", "banana", "bread", "milk_carton", "eggs", "cheese", "yoghurt", "water"]
# Products per hour through the day (stores open around the clock, quiet at night): UTC here.
CURVE = [
    0.1,
    0.05,
    0.05,
    0.05,
    0.1,
    0.2,
    0.4,
    0.7,
    0.9,
    1.0,
    1.0,
    1.1,
    1.6,
    1.6,
    1.1,
    1.0,
    1.2,
    1.7,
    1.8,
    1.4,
    1.0,
    0.7,
    0.4,
    0.2,
]


def _hourly_rows(days: int, n_devices: int, end_day: int, seed: int) -> Iterator[tuple[int, int, int, int]]:
    """(device_id, hour, key_id, n); key ids are 2i+1 (in) and 2i+2 (out) for class i."""
    rng = random.Random(seed)
    weights = [rng.uniform(0.3, 1.0) for _ in CLASSES]
    for device_id in range(1, n_devices + 1):
        busy = rng.uniform(0.5, 1.5)
        for day in range(end_day - days, end_day):
            for h, level in enumerate(CURVE):
                hour = day * 86400 + h * 3600
                for i, w in enumerate(weights):
                    n = int(rng.expovariate(1.0 / (12 * busy * level * w)))
                    if n:
                        yield (device_id, hour, 2 * i + 1, n)
                    if n and rng.random() < 0.1:
                        yield (device_id, hour, 2 * i + 2, 1)


def generate(
    engine: Engine, days: int = 30, stores: int = 100, lanes: int = 10, seed: int = 1
) -> dict[str, Any]:
    """Fill an empty, migrated database; return what was written."""
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(t.devices)).scalar_one():
            raise SystemExit("the database is not empty: generate into a new one")
    started = time.perf_counter()
    now = time.time()
    end_day = int(now // 86400) + 1  # through today, all of it (the busiest "today" a query can see)
    n = stores * lanes
    devices = [
        {
            "id": i + 1,
            "site": f"store-{i // lanes:04d}",
            "device": f"lane-{i % lanes:02d}",
            "first_seen": now - days * 86400,
        }
        for i in range(n)
    ]
    epochs = []
    for d in devices:
        for day in range(end_day - days, end_day):
            epochs.append(
                {
                    "device_id": d["id"],
                    "epoch": f"{d['id']:08x}{day:08x}",
                    "first_seen": day * 86400 + 6 * 3600,
                    "state": "continued",
                    "started": day * 86400 + 6 * 3600,
                }
            )
    keys = [
        {"id": 2 * i + 1 + (d == "out"), "line": "lane", "direction": d, "class_name": c}
        for i, c in enumerate(CLASSES)
        for d in ("in", "out")
    ]
    with engine.begin() as conn:
        conn.execute(t.devices.insert(), devices)
        conn.execute(t.epochs.insert(), epochs)
        conn.execute(t.count_keys.insert(), keys)
    per_site: dict[tuple[str, int, int], int] = {}

    def both() -> Iterator[tuple[int, int, int, int]]:
        for r in _hourly_rows(days, n, end_day, seed):
            key = (str(devices[r[0] - 1]["site"]), r[1], r[2])
            per_site[key] = per_site.get(key, 0) + r[3]
            yield r

    rows = _copy(engine, "hourly", ("device_id", "hour", "key_id", "n"), both())
    _copy(
        engine, "site_hourly", ("site", "hour", "key_id", "n"), ((*k, v) for k, v in sorted(per_site.items()))
    )
    spans = _spans(engine, n, end_day, days, seed)
    return {
        "devices": n,
        "epochs": len(epochs),
        "hourly_rows": rows,
        "spans": spans,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _copy(engine: Engine, table: str, names: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> int:
    count = 0
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
                    count += 1
            raw.commit()
            cur.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
        return count
    chunk: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for r in rows:
            chunk.append(dict(zip(names, r, strict=True)))
            if len(chunk) == 50_000:
                conn.execute(t.metadata.tables[table].insert(), chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            conn.execute(t.metadata.tables[table].insert(), chunk)
            count += len(chunk)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return count


def _spans(engine: Engine, n: int, end_day: int, days: int, seed: int) -> int:
    """One lane in fifty lost counts messages once: an unattributed stretch across two hours."""
    rng = random.Random(seed + 1)
    rows = []
    for device_id in range(1, n + 1, 50):
        day = rng.randrange(end_day - days, end_day)
        start = day * 86400 + 11 * 3600 + 1800.0
        epoch_id = (device_id - 1) * days + (day - (end_day - days)) + 1
        rows.append(
            {
                "epoch_id": epoch_id,
                "seq": 10**6,
                "device_id": device_id,
                "period_start": start + 3600,
                "period_end": start + 3610,
                "interval": "{}",
                "counted": None,
                "role": "counted",
                "gap": "partial",
                "gap_start": start,
                "open_counts": json.dumps({"lane": {"in": {"apple": 3}, "out": {}}}),
                "contrib": "[]",
            }
        )
    with engine.begin() as conn:
        conn.execute(t.counts_periods.insert(), rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="database URL or SQLite file (new)")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--stores", type=int, default=100)
    p.add_argument("--lanes", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    engine = make_engine(a.db, writer=True)
    migrate(engine)
    print(json.dumps(generate(engine, a.days, a.stores, a.lanes, a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
