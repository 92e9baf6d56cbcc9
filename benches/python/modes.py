"""Benchmark modes (e) and (f), driven by `lakegate-bench run`.

(e) lakegate end to end through the ADBC Flight SQL driver into a pyarrow Table;
(f) DuckDB in-process over the Parquet files of the same Delta snapshots (listed in the manifest);
(g) the same, with the tables loaded into DuckDB's own memory first (load time not counted).

Prints one JSON object: {"e": {"q01": {"times": [...], "answer": [[...], ...]}, ...}, "f": {...}}
with seconds per timed run and the answer of the first run in the harness's canonical form
(numbers as floats, everything else as text, NULL as null); a query that fails has "error".
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path


def canonical(table):
    """Rows of a pyarrow Table as lists of float / str / None."""
    import pyarrow as pa

    columns = []
    for col in table.columns:
        t = col.type
        numeric = (
            pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        )
        values = col.to_pylist()
        if numeric:
            columns.append([None if v is None else float(v) for v in values])
        else:
            columns.append([None if v is None else text(v) for v in values])
    return [list(row) for row in zip(*columns)] if columns else []


def text(v):
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def measure(run, sql, warmup, runs):
    out = {"times": []}
    try:
        for i in range(warmup + runs):
            started = time.perf_counter()
            table = run(sql)
            elapsed = time.perf_counter() - started
            if i == 0:
                out["answer"] = canonical(table)
            if i >= warmup:
                out["times"].append(elapsed)
    except Exception as e:  # a failing query is reported, the others still run
        out = {"error": f"{type(e).__name__}: {e}"}
    return out


def adbc_connect(a):
    """A lakegate connection as the bench user, working under the run's scenario."""
    import adbc_driver_flightsql.dbapi as flightsql

    db_kwargs = {"username": a.user, "password": a.password}
    if a.tls_root_certs:
        db_kwargs["adbc.flight.sql.client_option.tls_root_certs"] = Path(a.tls_root_certs).read_text()
    return flightsql.connect(
        a.endpoint,
        db_kwargs=db_kwargs,
        conn_kwargs={"adbc.flight.sql.session.option.scenario": a.scenario},
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--modes", default="ef")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--queries", required=True, help="files, comma-separated")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--wire", help="time one large result through ADBC instead")
    p.add_argument("--tls-root-certs", help="a CA (PEM) to trust, for a grpc+tls:// endpoint")
    a = p.parse_args()

    if a.wire:
        conn = adbc_connect(a)
        times, rows = [], 0
        for i in range(a.runs + 1):  # one warm-up run
            started = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(a.wire)
                table = cur.fetch_arrow_table()
            elapsed = time.perf_counter() - started
            rows = table.num_rows
            del table
            if i > 0:
                times.append(elapsed)
        conn.close()
        json.dump({"rows": rows, "times": times}, sys.stdout)
        return

    queries = [Path(q) for q in a.queries.split(",")]
    result = {}

    if "e" in a.modes:
        conn = adbc_connect(a)

        def adbc(sql):
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetch_arrow_table()

        result["e"] = {q.stem: measure(adbc, q.read_text(), a.warmup, a.runs) for q in queries}
        conn.close()

    for letter, kind in [("f", "VIEW"), ("g", "TABLE")]:
        if letter not in a.modes:
            continue
        import duckdb

        manifest = json.loads(Path(a.manifest).read_text())
        con = duckdb.connect()
        if a.threads:
            con.execute(f"SET threads = {a.threads}")
        con.execute("CREATE SCHEMA tpch")
        started = time.perf_counter()
        for table, files in manifest["files"].items():
            listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            con.execute(
                f"CREATE {kind} tpch.{table} AS SELECT * FROM read_parquet([{listed}])"
            )
        if kind == "TABLE":
            print(f"  duckdb loaded the tables in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)

        def duck(sql):
            return con.sql(sql).to_arrow_table()

        result[letter] = {
            q.stem: measure(duck, q.read_text(), a.warmup, a.runs) for q in queries
        }
        con.close()

    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
