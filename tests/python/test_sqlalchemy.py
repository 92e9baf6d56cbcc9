"""SQLAlchemy reflection through flightsql-dbapi (SQLAlchemy 1.4), as BI tools built on it list
schemas, tables and typed columns: the types come from the Flight SQL column metadata."""

from urllib.parse import urlparse

from sqlalchemy import create_engine, inspect, text

from test_adbc import server  # noqa: F401  (the shared demo server fixture)


def engine(uri):
    address = urlparse(uri).netloc
    return create_engine(
        f"datafusion://banker:banker-demo@{address}"
        "?insecure=True&x-lakegate-scenario=bank-credit"
    )


def test_reflection_lists_the_scenario_tables_with_real_types(server):  # noqa: F811
    i = inspect(engine(server))
    assert set(i.get_schema_names()) == {"lakegate", "market", "social_security"}
    assert "enterprises" in i.get_table_names(schema="market")
    # The data products listing is reflected as a table with typed columns.
    assert i.get_table_names(schema="lakegate") == ["products"]
    listing = {c["name"]: str(c["type"]) for c in i.get_columns("products", schema="lakegate")}
    assert listing["name"] == "TEXT" and listing["max_rows"] == "BIGINT", listing
    types = {c["name"]: str(c["type"]) for c in i.get_columns("penalties", schema="market")}
    assert types["penalty_id"] == "BIGINT" and types["decided_on"] == "DATE", types
    assert types["amount"].startswith("DECIMAL") and types["reason"] == "TEXT", types


def test_queries_run_through_the_engine(server):  # noqa: F811
    with engine(server).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM market.enterprises")).scalar() == 200
