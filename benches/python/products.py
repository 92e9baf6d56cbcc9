"""Data product calls, driven by `lakegate-bench products`: a verification call (one person's
lookup) by one ADBC client and by several at once, a batch call about many people, and DuckDB
answering the same lookup in-process on the same Parquet files. Every answer is checked.

Prints one JSON object: {"rows": N, "figures": [{"what", "calls", "p50_ms", "p99_ms", "per_s"}]}.
"""

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path


def person_id(i):
    return f"P{i:011d}"


def active(i):
    return i % 7 != 0


def percentile(sorted_ms, q):
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, int(round(q * (len(sorted_ms) - 1)))))
    return sorted_ms[k]


def figure(what, latencies_s, span_s, units=None):
    ms = sorted(t * 1000 for t in latencies_s)
    n = len(latencies_s)
    return {
        "what": what,
        "calls": n,
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "per_s": (units if units is not None else n) / span_s,
    }


def connect(a):
    import adbc_driver_flightsql.dbapi as flightsql

    return flightsql.connect(
        a.endpoint,
        db_kwargs={"username": a.user, "password": a.password},
        conn_kwargs={"adbc.flight.sql.session.option.scenario": a.scenario},
        autocommit=True,
    )


def verify_calls(conn, ids, latencies):
    """Calls verify_person once per id (one prepared statement, rebound), checking each answer."""
    with conn.cursor() as cur:
        for i in ids:
            started = time.perf_counter()
            cur.execute("SELECT * FROM verify_person(?)", (person_id(i),))
            got = cur.fetchall()
            latencies.append(time.perf_counter() - started)
            if got != [(person_id(i), active(i))]:
                raise SystemExit(f"verify_person({person_id(i)}) answered {got}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=10000)
    p.add_argument("--parquet", required=True)
    a = p.parse_args()
    rng = random.Random(42)
    figures = []

    # One client: latency of each call, after a warm-up.
    conn = connect(a)
    verify_calls(conn, [rng.randrange(a.rows) for _ in range(50)], [])
    single = []
    started = time.perf_counter()
    verify_calls(conn, [rng.randrange(a.rows) for _ in range(a.calls)], single)
    figures.append(figure("verify_person, 1 ADBC client", single, time.perf_counter() - started))

    # Several clients at once, each on its own connection, the same number of calls each.
    conns = [connect(a) for _ in range(a.clients)]
    for c in conns:
        verify_calls(c, [rng.randrange(a.rows) for _ in range(10)], [])
    per_client = max(1, a.calls // a.clients)
    work = [[rng.randrange(a.rows) for _ in range(per_client)] for _ in conns]
    lat = [[] for _ in conns]
    errors = []

    def client(k):
        try:
            verify_calls(conns[k], work[k], lat[k])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(conns))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    span = time.perf_counter() - started
    if errors:
        raise SystemExit(f"a client failed: {errors[0]}")
    figures.append(
        figure(f"verify_person, {a.clients} ADBC clients", [x for l in lat for x in l], span)
    )
    for c in conns:
        c.close()

    # A batch call about `batch` people (a tenth of them not on the register).
    import pyarrow as pa

    batch_lat = []
    with conn.cursor() as cur:
        for run in range(4):  # one warm-up
            ids = [rng.randrange(a.rows) for _ in range(a.batch)]
            ids = list(dict.fromkeys(ids))
            missing = [f"Q{k:011d}" for k in range(a.batch // 10)]
            values = [person_id(i) for i in ids] + missing
            arg = pa.record_batch([pa.array([values], pa.list_(pa.string()))], names=["0"])
            started = time.perf_counter()
            cur.execute("SELECT * FROM verify_people(?)", arg)
            got = cur.fetch_arrow_table()
            elapsed = time.perf_counter() - started
            answers = dict(zip(got.column("person_id").to_pylist(), got.column("active").to_pylist()))
            if answers != {person_id(i): active(i) for i in ids}:
                raise SystemExit("verify_people answered wrongly")
            if run > 0:
                batch_lat.append(elapsed)
    figures.append(
        figure(
            f"verify_people, one batch of {a.batch + a.batch // 10} ids",
            batch_lat,
            sum(batch_lat),
            units=len(batch_lat) * (a.batch + a.batch // 10),
        )
    )
    conn.close()

    # DuckDB in-process on the same Parquet files (the Delta table's, all current).
    import duckdb

    files = sorted(str(f) for f in Path(a.parquet).glob("*.parquet"))
    db = duckdb.connect()
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    db.execute(f"CREATE VIEW people AS SELECT * FROM read_parquet([{listed}])")
    lookup = "SELECT person_id, status = 'active' AS active FROM people WHERE person_id = ?"
    for _ in range(50):
        db.execute(lookup, [person_id(rng.randrange(a.rows))]).fetchall()
    duck = []
    started = time.perf_counter()
    for _ in range(a.calls):
        i = rng.randrange(a.rows)
        t = time.perf_counter()
        got = db.execute(lookup, [person_id(i)]).fetchall()
        duck.append(time.perf_counter() - t)
        if got != [(person_id(i), active(i))]:
            raise SystemExit(f"DuckDB answered {got}")
    figures.append(figure("DuckDB in-process, the same lookup", duck, time.perf_counter() - started))
    duck_batch = []
    for run in range(4):
        ids = list(dict.fromkeys(rng.randrange(a.rows) for _ in range(a.batch)))
        started = time.perf_counter()
        got = db.execute(
            "SELECT p.person_id, p.status = 'active' FROM (SELECT unnest(?) AS person_id) k "
            "JOIN people p ON p.person_id = k.person_id",
            [[person_id(i) for i in ids]],
        ).fetchall()
        elapsed = time.perf_counter() - started
        if dict(got) != {person_id(i): active(i) for i in ids}:
            raise SystemExit("DuckDB's batch answered wrongly")
        if run > 0:
            duck_batch.append(elapsed)
    figures.append(
        figure(
            f"DuckDB in-process, a batch of {a.batch} ids",
            duck_batch,
            sum(duck_batch),
            units=len(duck_batch) * a.batch,
        )
    )
    json.dump({"rows": a.rows, "figures": figures}, sys.stdout)


if __name__ == "__main__":
    main()
