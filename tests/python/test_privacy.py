"""Differential privacy through the Python ADBC driver, on the demo's `health-statistics`
scenario (the statistician's diagnoses under `@epsilon("0.5")`, an `epsilon_budget` of 10): noisy
results say so in their schema, prepared statements with parameters pay per execution, and the
budget refuses past its end, also after the server restarts.
"""

import pytest

from test_attacks import Server, connect, failure, rows

SCENARIO = "health-statistics"
COUNTS = "SELECT diagnosis, count(*) AS n FROM health.visits GROUP BY diagnosis"


@pytest.fixture
def demo(tmp_path):
    s = Server(tmp_path / "demo")
    yield s
    s.stop()


def test_noisy_counts_carry_their_epsilon_and_the_budget_holds_across_restarts(demo):
    conn = connect(demo.uri, "statistician", "statistician-demo", SCENARIO)
    with conn.cursor() as cur:
        cur.execute(COUNTS)
        table = cur.fetch_arrow_table()
    field = table.schema.field("n")
    assert field.metadata[b"lakegate.epsilon"] == b"0.5", field.metadata
    assert b"lakegate.noise_scale" in field.metadata
    assert table.schema.metadata[b"lakegate.epsilon"] == b"0.5"
    assert table.num_rows > 0

    # The exact rule of the insurer's scenario is not noisy and spends nothing.
    exact = connect(demo.uri, "insurer", "insurer-demo", "insurance-underwriting")
    with exact.cursor() as cur:
        cur.execute(COUNTS)
        assert b"lakegate.epsilon" not in (cur.fetch_arrow_table().schema.metadata or {})

    # A prepared statement with a parameter (ADBC prepares every statement) pays per run.
    sql = "SELECT diagnosis, count(*) FROM health.visits WHERE district = ? GROUP BY diagnosis"
    for _ in range(19):
        rows(conn, sql, ("Haidian",))
    err = failure(conn, COUNTS)
    assert "epsilon_budget 10" in err and "ε=0.5" in err, err
    # Work that releases nothing noisy is not refused.
    assert rows(conn, "SELECT count(*) FROM health.visits")[0][0] > 0
    conn.close()
    exact.close()

    # The spends are on the audit trail: a restarted server refuses too.
    demo.stop()
    demo.start()
    conn = connect(demo.uri, "statistician", "statistician-demo", SCENARIO)
    assert "epsilon_budget" in failure(conn, COUNTS)
    conn.close()
