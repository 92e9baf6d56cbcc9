"""Samples (policy-model.md §8) through the Python ADBC driver: the demo's product developer
works in a sandbox of a fixed 10% of people — identities hashed, names redacted, dates as
years — and every answer is checked against the raw Delta files and the documented keyed hash
(HMAC-SHA256 of "lakegate.sample\\0" and the subject key with the deployment's secret).
"""

import hashlib
import hmac
import re
from pathlib import Path

import adbc_driver_manager
import pyarrow.parquet as pq
import pytest

from test_attacks import Server, connect, rows

USER, PASSWORD, SCENARIO = "developer", "developer-demo", "product-sandbox"
SHARE = 1000  # the demo's @sample("10"), in hundredths of a percent


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("sample") / "demo")
    yield s
    s.stop()


def mask_key(root: Path) -> bytes:
    m = re.search(r'^mask_key = "([^"]+)"', (root / "lakegate.toml").read_text(), re.M)
    return m.group(1).encode()


def raw(root: Path, schema: str, table: str):
    folder = root / "lake" / schema / table
    return pq.ParquetDataset(sorted(str(p) for p in folder.glob("*.parquet"))).read().to_pylist()


def in_sample(key: bytes, subject: str) -> bool:
    digest = hmac.new(key, b"lakegate.sample\0" + subject.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < SHARE


def hashed(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


# The sandbox's tables and their subject keys.
TABLES = [
    ("civil", "residents", "person_id"),
    ("health", "visits", "patient_id"),
    ("health", "insurance", "person_id"),
    ("social_security", "contributions", "person_id"),
]


def test_the_sandbox_holds_exactly_the_keyed_sample_in_every_table(sandbox):
    key = mask_key(sandbox.dir)
    with connect(sandbox.uri, USER, PASSWORD, SCENARIO) as conn:
        for schema, table, subject in TABLES:
            everyone = raw(sandbox.dir, schema, table)
            kept = [r for r in everyone if in_sample(key, r[subject])]
            people = {r[subject] for r in everyone}
            sampled = {r[subject] for r in kept}
            # About a tenth of the people, and neither none nor all of them.
            assert 0.04 * len(people) < len(sampled) < 0.18 * len(people), (table, len(sampled))
            got = rows(conn, f"SELECT {subject}, count(*) FROM {schema}.{table} GROUP BY {subject}")
            assert {s: n for s, n in got} == {
                hashed(key, p): sum(1 for r in kept if r[subject] == p) for p in sampled
            }, table
            # The same people in every query, however it is written.
            again = rows(conn, f"SELECT DISTINCT {subject} FROM {schema}.{table} ORDER BY 1 DESC")
            assert {s for (s,) in again} == {s for s, _ in got}
        # Tables keyed by the same people sample the same people, so the sandbox's joins meet.
        visits = raw(sandbox.dir, "health", "visits")
        residents = {r["person_id"] for r in raw(sandbox.dir, "civil", "residents")}
        joined = sum(1 for v in visits if v["patient_id"] in residents and in_sample(key, v["patient_id"]))
        assert joined > 0
        (n,) = rows(
            conn,
            "SELECT count(*) FROM civil.residents r JOIN health.visits v ON v.patient_id = r.person_id",
        )[0]
        assert n == joined
        # Aggregates run over the sample's rows only, with the raw values the sandbox shows.
        kept = [v for v in visits if in_sample(key, v["patient_id"])]
        (count, cost) = rows(conn, "SELECT count(*), sum(cost) FROM health.visits")[0]
        assert (count, cost) == (len(kept), sum(v["cost"] for v in kept))
        # Masks hold on the sample: names redacted, birth dates as years.
        sample = rows(conn, "SELECT name, birth_date FROM civil.residents")
        assert sample and all(name == "****" for name, _ in sample)
        assert all((d.month, d.day) == (1, 1) for _, d in sample)


def test_nothing_outside_the_sample_and_no_raw_identity_reaches_the_developer(sandbox):
    key = mask_key(sandbox.dir)
    residents = raw(sandbox.dir, "civil", "residents")
    visits = raw(sandbox.dir, "health", "visits")
    outside = [r for r in residents if not in_sample(key, r["person_id"])]
    victim = outside[0]["person_id"]
    # Canaries: every raw identity number and name (sampled or not: they are masked), the
    # hashes and visit ids of everyone outside the sample, and the deployment's secret.
    canaries = {r["person_id"] for r in residents} | {r["name"] for r in residents}
    canaries |= {v["patient_id"] for v in visits} | {v["patient_name"] for v in visits}
    canaries |= {hashed(key, r["person_id"]) for r in outside}
    canaries.add(key.decode())
    # Row ids are hashed too: numbered 1..N, their gaps would count the rows outside the sample.
    outside_visits = {
        hashed(key, str(v["visit_id"])) for v in visits if not in_sample(key, v["patient_id"])
    }
    # (The same numbers are record ids of sampled contributions, whose hashes may show.)
    records = raw(sandbox.dir, "social_security", "contributions")
    shown_records = {hashed(key, str(r["record_id"])) for r in records if in_sample(key, r["person_id"])}
    canaries |= outside_visits - shown_records
    received = []
    with connect(sandbox.uri, USER, PASSWORD, SCENARIO) as conn:
        attacks = [
            "SELECT * FROM civil.residents",
            "SELECT * FROM health.visits",
            "SELECT * FROM social_security.contributions",
            "SELECT * FROM health.insurance",
            # The raw id and its hash, as filters: the rows outside the sample do not exist.
            f"SELECT * FROM health.visits WHERE patient_id = '{victim}'",
            f"SELECT * FROM civil.residents WHERE person_id = '{hashed(key, victim)}'",
            f"SELECT count(*) FROM civil.residents WHERE person_id = '{hashed(key, victim)}'",
            "SELECT count(*) FROM civil.residents WHERE person_id IS NULL OR person_id IS NOT NULL",
            "SELECT CAST(person_id AS BIGINT) FROM civil.residents",
            "SELECT CAST(name AS BIGINT) FROM civil.residents",
            "EXPLAIN SELECT * FROM civil.residents",
            "EXPLAIN VERBOSE SELECT * FROM health.visits WHERE patient_id LIKE '11%'",
            "EXPLAIN ANALYZE SELECT count(*) FROM health.visits",
            # Products are not approved here; other tables are not in the scenario.
            f"SELECT * FROM lapse_check('{victim}')",
            "SELECT * FROM market.enterprises",
            "SELECT * FROM lakegate.products",
        ]
        for sql in attacks:
            try:
                received.append(repr(rows(conn, sql)))
            except adbc_driver_manager.Error as e:
                received.append(str(e))
        # No count or visit id of the victim: the filters above found nothing.
        assert rows(conn, f"SELECT count(*) FROM health.visits WHERE patient_id = '{victim}'") == [(0,)]
        got_visits = {v for (v,) in rows(conn, "SELECT visit_id FROM health.visits")}
        assert got_visits == {
            hashed(key, str(v["visit_id"])) for v in visits if in_sample(key, v["patient_id"])
        }
        assert not (got_visits & outside_visits)
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM civil.residents")
            received.append(repr(cur.fetch_arrow_table().schema))
    text = "\n".join(received)
    assert "IN SAMPLE (10%)" in text, "EXPLAIN names the sample"
    leaked = sorted(c for c in canaries if c and c in text)
    assert not leaked, leaked[:5]
