"""End to end through the Python ADBC Flight SQL driver, as BI tools and notebooks use lakegate.

A real `lakegate demo` server is started on 127.0.0.1 over a freshly built demo lake.
"""

import os
import re
import subprocess
import threading
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LAKEGATE_BIN", ROOT / "target" / "debug" / "lakegate"))
SCENARIO_OPTION = "adbc.flight.sql.session.option.scenario"
SCENARIO_HEADER = "adbc.flight.sql.rpc.call_header.x-lakegate-scenario"


def start(args):
    """Starts `lakegate args...` and waits until it listens; returns (process, address)."""
    proc = subprocess.Popen(
        [str(BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    timer = threading.Timer(300, proc.kill)
    timer.start()
    for line in proc.stdout:
        seen.append(line)
        m = re.search(r"lakegate listening on (\S+)", line)
        if m:
            timer.cancel()
            # Keep draining stdout so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    timer.cancel()
    proc.kill()
    pytest.fail("lakegate did not start:\n" + "".join(seen))


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Builds a demo lake and serves it; yields the grpc:// URI."""
    lake = tmp_path_factory.mktemp("demo")
    proc, address = start(["demo", "--dir", str(lake), "--listen", "127.0.0.1:0", "--rows", "1000"])
    yield f"grpc://{address}"
    stop(proc)


def connect(uri, user="banker", scenario="bank-credit", password=None, db_extra=None):
    db_kwargs = {"username": user, "password": password or f"{user}-demo"}
    db_kwargs.update(db_extra or {})
    conn_kwargs = {SCENARIO_OPTION: scenario} if scenario else {}
    return flightsql.connect(uri, db_kwargs=db_kwargs, conn_kwargs=conn_kwargs)


def scalar(conn, sql, parameters=None):
    with conn.cursor() as cur:
        cur.execute(sql, parameters)
        return cur.fetchone()[0]


def test_execute_without_parameters(server):
    with connect(server) as conn:
        assert scalar(conn, "SELECT count(*) FROM market.enterprises") == 200
        with conn.cursor() as cur:
            cur.execute(
                "SELECT district, count(*) AS n FROM market.enterprises "
                "GROUP BY district ORDER BY district"
            )
            rows = cur.fetchall()
        assert sum(n for _, n in rows) == 200
        assert [d for d, _ in rows] == sorted(d for d, _ in rows)


def test_execute_with_parameters(server):
    with connect(server) as conn:
        literal = scalar(
            conn, "SELECT count(*) FROM market.penalties WHERE district = 'Haidian'"
        )
        bound = scalar(
            conn, "SELECT count(*) FROM market.penalties WHERE district = ?", ("Haidian",)
        )
        assert bound == literal > 0
        two = scalar(
            conn,
            "SELECT count(*) FROM market.penalties WHERE district = ? AND amount > ?",
            ("Haidian", 100),
        )
        assert 0 < two <= literal


def test_fetch_as_arrow(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM market.enterprises ORDER BY credit_code LIMIT 5")
        table = cur.fetch_arrow_table()
    assert isinstance(table, pa.Table)
    assert table.num_rows == 5
    assert table.column_names[:3] == ["credit_code", "name", "legal_rep_name"]
    assert table.schema.field("credit_code").type == pa.string()
    assert table.schema.field("registered_capital").type == pa.decimal128(14, 2)
    codes = table.column("credit_code").to_pylist()
    assert codes == sorted(codes)


def test_get_objects_lists_the_scenario_tables(server):
    with connect(server) as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert list(catalogs) == ["lake"]
    schemas = {s["db_schema_name"]: s for s in catalogs["lake"]["catalog_db_schemas"]}
    assert sorted(schemas) == ["lakegate", "market", "social_security"]
    # The products listing is discovered as a table, with its columns.
    (listing,) = schemas["lakegate"]["db_schema_tables"]
    assert listing["table_name"] == "products"
    assert [c["column_name"] for c in listing["table_columns"]] == [
        "name", "description", "parameters", "output", "max_rows"
    ]
    tables = {t["table_name"]: t for t in schemas["market"]["db_schema_tables"]}
    assert sorted(tables) == ["enterprises", "penalties"]
    columns = [c["column_name"] for c in tables["enterprises"]["table_columns"]]
    assert "credit_code" in columns and "legal_rep_id" in columns
    # BI tools read SQL types and where a column comes from.
    described = {c["column_name"]: c for c in tables["enterprises"]["table_columns"]}
    assert described["credit_code"]["xdbc_type_name"] == "VARCHAR"
    assert described["registered_capital"]["xdbc_type_name"] == "DECIMAL"
    assert described["established"]["xdbc_type_name"] == "DATE"
    for c in described.values():
        assert c["xdbc_type_name"], c
        assert (c["xdbc_scope_catalog"], c["xdbc_scope_schema"], c["xdbc_scope_table"]) == (
            "lake",
            "market",
            "enterprises",
        ), c


def test_the_current_catalog_is_the_lake(server):
    # BI tools ask for (and may set) the current catalog; there is one.
    with connect(server) as conn:
        assert conn.adbc_current_catalog == "lake"
        conn.adbc_current_catalog = "lake"
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            conn.adbc_current_catalog = "elsewhere"
        assert conn.adbc_current_catalog == "lake"
        assert scalar(conn, "SELECT count(*) FROM market.penalties") > 0


def test_result_columns_carry_flight_sql_type_metadata(server):
    with connect(server) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT credit_code, registered_capital, count(*) OVER () AS n FROM market.enterprises LIMIT 1")
            schema = cur.fetch_arrow_table().schema
    meta = {f.name: {k.decode(): v.decode() for k, v in (f.metadata or {}).items()} for f in schema}
    assert meta["credit_code"]["ARROW:FLIGHT:SQL:TYPE_NAME"] == "VARCHAR"
    assert meta["registered_capital"]["ARROW:FLIGHT:SQL:TYPE_NAME"] == "DECIMAL"
    assert meta["registered_capital"]["ARROW:FLIGHT:SQL:PRECISION"] == "14"
    assert meta["registered_capital"]["ARROW:FLIGHT:SQL:SCALE"] == "2"
    assert meta["n"]["ARROW:FLIGHT:SQL:TYPE_NAME"] == "BIGINT"


def test_get_table_schema_matches_the_result_schema(server):
    with connect(server) as conn:
        listed = conn.adbc_get_table_schema(
            "enterprises", catalog_filter="lake", db_schema_filter="market"
        )
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM market.enterprises LIMIT 1")
            served = cur.fetch_arrow_table().schema
    assert listed.names == served.names
    assert listed.types == served.types


def test_scenario_as_call_header(server):
    with connect(server, scenario=None, db_extra={SCENARIO_HEADER: "bank-credit"}) as conn:
        assert scalar(conn, "SELECT count(*) FROM market.enterprises") == 200


def test_no_scenario_is_a_clear_error(server):
    with connect(server, scenario=None) as conn:
        with pytest.raises(adbc_driver_manager.Error, match="no scenario") as e:
            scalar(conn, "SELECT count(*) FROM market.enterprises")
        # A status the driver maps to a code, not UNKNOWN.
        assert e.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT


def test_unknown_scenario_is_refused(server):
    with pytest.raises(adbc_driver_manager.Error, match="unknown scenario"):
        with connect(server, scenario="no-such-scenario") as conn:
            scalar(conn, "SELECT 1")


def test_wrong_password_is_refused(server):
    with pytest.raises(adbc_driver_manager.Error, match="invalid user name or password"):
        with connect(server, password="wrong") as conn:
            scalar(conn, "SELECT 1")


def test_table_outside_the_scenario_does_not_exist(server):
    with connect(server) as conn:
        with pytest.raises(adbc_driver_manager.Error) as denied:
            scalar(conn, "SELECT count(*) FROM health.visits")
        with pytest.raises(adbc_driver_manager.Error) as missing:
            scalar(conn, "SELECT count(*) FROM health.nothing")
    assert "not found" in str(denied.value)
    assert str(denied.value).replace("visits", "X") == str(missing.value).replace(
        "nothing", "X"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE x AS SELECT 1",
        "DROP TABLE market.enterprises",
        "DELETE FROM market.penalties",
        "COPY (SELECT 1) TO '/tmp/lakegate-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ],
)
def test_writes_are_refused_and_the_server_keeps_serving(server, sql):
    with connect(server) as conn:
        with pytest.raises(adbc_driver_manager.Error, match="read-only"):
            scalar(conn, sql)
        assert scalar(conn, "SELECT count(*) FROM market.enterprises") == 200


def test_bulk_ingest_and_executemany_are_refused_and_the_server_keeps_serving(server):
    with connect(server) as conn:
        with conn.cursor() as cur:
            for mode, table in [("create", "newtable"), ("append", "enterprises")]:
                with pytest.raises(adbc_driver_manager.Error, match="read-only"):
                    cur.adbc_ingest(table, pa.table({"a": [1, 2]}), mode=mode,
                                    db_schema_name="market")
            # DB-API executemany is for writes: the driver sends it as an update.
            with pytest.raises(adbc_driver_manager.Error, match="read-only"):
                cur.executemany(
                    "SELECT count(*) FROM market.penalties WHERE district = ?",
                    [("Haidian",), ("Chaoyang",)],
                )
        assert scalar(conn, "SELECT count(*) FROM market.enterprises") == 200


def test_partitioned_results_read_back_as_one_result(server):
    sql = "SELECT district, count(*) AS n FROM market.enterprises GROUP BY district ORDER BY district"
    with connect(server) as conn:
        whole = conn.cursor()
        whole.execute(sql)
        expected = whole.fetch_arrow_table()
        whole.close()
        # The driver runs it as a prepared statement: its partitions live while it is open.
        with conn.cursor() as cur:
            partitions, schema = cur.adbc_execute_partitions(sql)
            assert partitions and schema.names == ["district", "n"]
            tables = []
            for p in partitions:
                with conn.cursor() as reader:
                    reader.adbc_read_partition(p)
                    tables.append(reader.fetch_arrow_table())
            assert pa.concat_tables(tables).equals(expected)
            # A partition is its maker's: another user cannot read it.
            with connect(server, user="insurer", scenario="insurance-underwriting") as other:
                with other.cursor() as reader:
                    with pytest.raises(adbc_driver_manager.Error, match="unknown or expired"):
                        reader.adbc_read_partition(partitions[0])
                        reader.fetch_arrow_table()
        # Closed with its statement.
        with conn.cursor() as reader:
            with pytest.raises(adbc_driver_manager.Error, match="unknown or expired"):
                reader.adbc_read_partition(partitions[0])
                reader.fetch_arrow_table()


def test_the_printed_connect_snippet_runs_when_pasted(tmp_path):
    """What `lakegate demo` prints runs as pasted, without the driver's autocommit warning."""
    import sys

    proc = subprocess.Popen(
        [str(BIN), "demo", "--dir", str(tmp_path / "demo"), "--listen", "127.0.0.1:0", "--rows", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    timer = threading.Timer(300, proc.kill)
    timer.start()
    try:
        snippet, taking = [], False
        for line in proc.stdout:
            if line.startswith("Connect from Python"):
                taking = True
                continue
            if taking:
                snippet.append(line)
                if line.startswith("print("):
                    break
        assert snippet, "no connect snippet was printed"
        run = subprocess.run(
            [sys.executable, "-c", "".join(snippet)], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        assert "autocommit" not in run.stderr.lower(), run.stderr
        assert "Haidian" in run.stdout or "district" in run.stdout, run.stdout
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def test_tls_demo_serves_adbc_over_grpc_tls_and_refuses_plaintext(tmp_path):
    demo = tmp_path / "tls-demo"
    subprocess.run(
        [str(BIN), "demo", "--dir", str(demo), "--rows", "200", "--tls", "--build-only"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    proc, address = start(["serve", "--config", str(demo / "lakegate.toml"), "--listen", "127.0.0.1:0"])
    try:
        ca = (demo / "tls" / "ca.pem").read_text()
        with flightsql.connect(
            f"grpc+tls://{address}",
            db_kwargs={
                "username": "banker",
                "password": "banker-demo",
                "adbc.flight.sql.client_option.tls_root_certs": ca,
            },
            conn_kwargs={SCENARIO_OPTION: "bank-credit"},
            autocommit=True,
        ) as conn:
            assert scalar(conn, "SELECT count(*) FROM market.enterprises") == 200
        with pytest.raises(adbc_driver_manager.Error) as plain:
            with flightsql.connect(
                f"grpc://{address}",
                db_kwargs={"username": "banker", "password": "banker-demo"},
                autocommit=True,
            ) as conn:
                scalar(conn, "SELECT 1")
        # The driver shows the server's reason, not a transport error.
        assert "accepts TLS connections only" in str(plain.value), str(plain.value)
        assert "grpc+tls://" in str(plain.value), str(plain.value)
    finally:
        stop(proc)
