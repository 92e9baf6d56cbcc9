"""Data products (policy-model.md §7) through the Python ADBC driver, as an operator's script
calls a verification service: a policy admin adds a product to a demo of its own (product
file, schema, policies, approval), the banker calls it with literals and with prepared
parameters, and every answer is checked against the raw Delta files read with pyarrow.
"""

import json
from pathlib import Path

import adbc_driver_manager
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from test_attacks import Server, connect, failure, rows

PRODUCT = """description = "Months of contributions on record, and months in arrears, of one person"
sql = \"\"\"
SELECT person_id, count(*) AS months, count(*) FILTER (WHERE status = 'arrears') AS arrears
FROM social_security.contributions WHERE person_id = $person_id GROUP BY person_id
\"\"\"
[params]
person_id = "string"
[review]
max_rows = 1
"""

# A batch product: one call about many people, one row per person with the person's id.
BATCH_PRODUCT = """description = "Months on record and in arrears, for each person of a list"
sql = \"\"\"
SELECT k.person_id, count(c.person_id) AS months,
       count(*) FILTER (WHERE c.status = 'arrears') AS arrears
FROM (SELECT unnest($person_id) AS person_id) k
LEFT JOIN social_security.contributions c ON c.person_id = k.person_id
GROUP BY k.person_id
\"\"\"
[params]
person_id = "list<string>"
[review]
max_rows = 1
batch_key = "person_id"
"""

POLICIES = """
@id("contribution-check-reads")
permit (principal == Lake::Product::"contribution_check",
        action in [Lake::Action::"query", Lake::Action::"read_column", Lake::Action::"read_row"],
        resource in Lake::Table::"social_security.contributions");

@id("contribution-batch-reads")
permit (principal == Lake::Product::"contribution_check_batch",
        action in [Lake::Action::"query", Lake::Action::"read_column", Lake::Action::"read_row"],
        resource in Lake::Table::"social_security.contributions");

"""


def add_product(root: Path):
    """What a policy admin does: the product files, their grants, and the scenario's approval
    (the demo's scenarios already approve products, and its schema has the attributes)."""
    (root / "products" / "contribution_check.toml").write_text(PRODUCT)
    (root / "products" / "contribution_check_batch.toml").write_text(BATCH_PRODUCT)
    policies = root / "policies"
    assert "products?: Set<Product>," in (policies / "schema.cedarschema").read_text()
    (policies / "policies.cedar").write_text((policies / "policies.cedar").read_text() + POLICIES)
    entities = json.loads((policies / "entities.json").read_text())
    for e in entities:
        if e["uid"] == {"type": "Lake::Scenario", "id": "bank-credit"}:
            e["attrs"]["products"] += [
                {"__entity": {"type": "Lake::Product", "id": "contribution_check"}},
                {"__entity": {"type": "Lake::Product", "id": "contribution_check_batch"}},
            ]
    (policies / "entities.json").write_text(json.dumps(entities, indent=2))


class ProductServer(Server):
    def __init__(self, root):
        # Build the demo, add the product, then serve.
        self._root = root
        super().__init__(root)

    def start(self):
        if not (self._root / "products" / "contribution_check.toml").exists():
            add_product(self._root)
        super().start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ProductServer(tmp_path_factory.mktemp("products") / "demo")
    yield s
    s.stop()


def raw_contributions(root: Path):
    folder = root / "lake" / "social_security" / "contributions"
    return pq.ParquetDataset(sorted(str(p) for p in folder.glob("*.parquet"))).read()


def test_the_banker_calls_a_product_and_gets_exactly_its_output(server):
    raw = raw_contributions(server.dir)
    # Three people: the most in arrears, one with none, and one who is not on record.
    arrears = raw.filter(pc.equal(raw["status"], "arrears"))
    counts = pc.value_counts(arrears["person_id"]).to_pylist()
    worst = max(counts, key=lambda c: (c["counts"], c["values"]))["values"]
    in_arrears = set(arrears["person_id"].to_pylist())
    clean = sorted(p for p in set(raw["person_id"].to_pylist()) if p not in in_arrears)[0]

    def expected(person):
        mine = raw.filter(pc.equal(raw["person_id"], person))
        n = mine.num_rows
        late = mine.filter(pc.equal(mine["status"], "arrears")).num_rows
        return [(person, n, late)] if n else []

    with connect(server.uri, "banker", "banker-demo", "bank-credit") as conn:
        # Literal arguments.
        assert rows(conn, f"SELECT * FROM contribution_check('{worst}')") == expected(worst)
        # Prepared parameters, as ADBC sends them; a parameter is a value, never SQL.
        for person in [worst, clean, "not-on-record", "x' OR '1'='1"]:
            got = rows(conn, "SELECT * FROM contribution_check(?)", (person,))
            assert got == expected(person), person
        # The output composes with the caller's SQL.
        got = rows(
            conn,
            "SELECT months - arrears AS paid FROM contribution_check(?) WHERE arrears >= 0",
            (worst,),
        )
        assert got == [(expected(worst)[0][1] - expected(worst)[0][2],)]
        # Names stay inside: the banker's scenario hides them, and the product does not
        # return them.
        names = set(raw["person_name"].to_pylist())
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM contribution_check(?)", (worst,))
            schema = cur.fetch_arrow_table().schema
        assert schema.names == ["person_id", "months", "arrears"]
        assert not any(n in str(schema) for n in names)

    # Another scenario's user cannot call it: it does not exist for them.
    with connect(server.uri, "insurer", "insurer-demo", "insurance-underwriting") as conn:
        with pytest.raises(adbc_driver_manager.Error) as e:
            rows(conn, f"SELECT * FROM contribution_check('{worst}')")
        assert "contribution_check" in str(e.value) and "not found" in str(e.value)


def test_a_batch_call_from_adbc_answers_for_each_person_of_a_list(server):
    """12,000 people in one call, bound by the ADBC driver as one list-typed parameter: one row
    per person, each checked against the raw files; refusals name the product."""
    import pyarrow as pa

    raw = raw_contributions(server.dir)
    people = sorted(set(raw["person_id"].to_pylist()))
    asked = people + [f"nobody-{i}" for i in range(12_000 - len(people))]
    assert len(asked) >= 12_000
    months = {}
    arrears = {}
    for p, status in zip(raw["person_id"].to_pylist(), raw["status"].to_pylist()):
        months[p] = months.get(p, 0) + 1
        arrears[p] = arrears.get(p, 0) + (status == "arrears")
    param = pa.record_batch([pa.array([asked], type=pa.list_(pa.string()))], names=["0"])
    with connect(server.uri, "banker", "banker-demo", "bank-credit") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM contribution_check_batch(?)", param)
            got = cur.fetch_arrow_table()
        assert got.schema.names == ["person_id", "months", "arrears"]
        assert got.num_rows == len(asked)
        answer = {r["person_id"]: (r["months"], r["arrears"]) for r in got.to_pylist()}
        assert set(answer) == set(asked)
        for p in asked:
            assert answer[p] == (months.get(p, 0), arrears.get(p, 0)), p
        # A value of the wrong kind is refused naming the product and its parameter.
        wrong = pa.record_batch([pa.array([[1, 2]], type=pa.list_(pa.int64()))], names=["0"])
        with pytest.raises(adbc_driver_manager.Error) as e:
            with conn.cursor() as cur:
                cur.execute("SELECT * FROM contribution_check_batch(?)", wrong)
                cur.fetchall()
        text = str(e.value)
        assert "contribution_check_batch" in text and "list<string>" in text, text


def raw_table(root: Path, schema: str, table: str):
    folder = root / "lake" / schema / table
    return pq.ParquetDataset(sorted(str(p) for p in folder.glob("*.parquet"))).read().to_pylist()


def test_every_demo_product_answers_as_its_raw_rows_say(server):
    """The demo's eight products (one per seed case), each called by the user of the scenario
    that approves it and checked against the raw Delta files; the callers cannot read the
    tables the products read."""
    root = server.dir
    contributions = raw_table(root, "social_security", "contributions")
    insurance = {r["person_id"]: r for r in raw_table(root, "health", "insurance")}
    residents = {r["person_id"]: r for r in raw_table(root, "civil", "residents")}
    visits = raw_table(root, "health", "visits")
    buildings = {r["building_id"]: r for r in raw_table(root, "housing", "buildings")}
    energy = raw_table(root, "utilities", "building_energy")
    gas = raw_table(root, "gas", "meter_readings")
    enterprises = {r["credit_code"]: r for r in raw_table(root, "market", "enterprises")}
    penalties = raw_table(root, "market", "penalties")
    people = sorted(residents)

    def lapse(p):
        mine = [r for r in contributions if r["person_id"] == p]
        if not mine:
            return []
        late = [r["month"] for r in mine if r["status"] == "arrears"]
        paid = [r["month"] for r in mine if r["status"] == "paid"]
        lapsed = bool(late) and (not paid or max(late) >= max(paid))
        return [(p, len(late), lapsed)]

    def status(p):
        r = insurance.get(p)
        return [(p, r["scheme"], r["status"] == "active")] if r else []

    def grade(p):
        mine = [r for r in visits if r["patient_id"] == p]
        cost = sum(r["cost"] for r in mine)
        if any(r["diagnosis"].startswith("C") for r in mine):
            g = "D"
        elif not mine:
            g = "A"
        elif cost < 20000:
            g = "B"
        elif cost < 50000:
            g = "C"
        else:
            g = "D"
        return [(p, g)]

    def tags(p):
        r = residents.get(p)
        if not r:
            return []
        mine = [v for v in visits if v["patient_id"] == p]
        chronic = [v for v in mine if v["diagnosis"][:3] in ("E11", "I10")]
        t = []
        if r["birth_date"] <= __import__("datetime").date(1961, 1, 1):
            t.append("elderly")
        if chronic:
            t.append("chronic-care")
        if len(mine) >= 6:
            t.append("frequent-visits")
        return [(p, ",".join(t))]

    def carbon(b):
        # Three departments: electricity (utilities), gas (the gas company), floor area (housing).
        mine = [e for e in energy if e["building_id"] == b]
        metered = [g for g in gas if g["building_id"] == b]
        if b not in buildings or not mine or not metered:
            return None
        kg = sum(e["electricity_kwh"] for e in mine) * 0.581 + sum(g["gas_m3"] for g in metered) * 2.162
        v = kg / 3.0 / buildings[b]["floor_area_m2"]
        return v, "green" if v <= 30 else "yellow" if v <= 60 else "red"

    def rating(c):
        e = enterprises[c]
        mine = [p for p in penalties if p["credit_code"] == c]
        total = sum(p["amount"] for p in mine)
        if e["status"] != "active":
            r = "D"
        elif not mine:
            r = "A"
        elif len(mine) <= 2 and total < 100000:
            r = "B"
        else:
            r = "C"
        return [(c, r)]

    def profile(c):
        e = enterprises[c]
        mine = [p for p in penalties if p["credit_code"] == c]
        staff = {r["person_id"] for r in contributions if r["employer_code"] == c}
        return (e["name"], e["industry"], e["district"], e["status"], e["established"].year,
                len(staff), len(mine), sum(p["amount"] for p in mine))

    # Jinan: lapse and insurance status, for people in every state and one not on record.
    in_arrears = sorted({r["person_id"] for r in contributions if r["status"] == "arrears"})
    asked = in_arrears[:3] + people[:3] + ["110101200001010000"]
    assert any(lapse(p) and lapse(p)[0][2] for p in asked), "a lapsed person is asked about"
    uninsured = [p for p in people if p not in insurance][:1]
    suspended = [p for p in people if insurance.get(p, {}).get("status") == "suspended"][:1]
    with connect(server.uri, "caseworker", "caseworker-demo", "benefit-eligibility") as conn:
        for p in asked:
            assert rows(conn, "SELECT * FROM lapse_check(?)", (p,)) == lapse(p), p
        for p in people[:3] + uninsured + suspended:
            assert rows(conn, "SELECT * FROM medical_insurance_status(?)", (p,)) == status(p), p
        # Definer rights: the caseworker reads none of these tables itself.
        for table in ["social_security.contributions", "health.insurance"]:
            assert "not found" in failure(conn, f"SELECT count(*) FROM {table}")

    # Qingdao: a grade, never the records.
    cancer = sorted({v["patient_id"] for v in visits if v["diagnosis"].startswith("C")})[:1]
    unseen = [p for p in people if p not in {v["patient_id"] for v in visits}][:1]
    with connect(server.uri, "insurer", "insurer-demo", "insurance-underwriting") as conn:
        for p in people[:5] + cancer + unseen:
            assert rows(conn, "SELECT * FROM risk_grade(?)", (p,)) == grade(p), p
        assert {g for p in people[:40] for _, g in grade(p)} >= {"B", "C", "D"}

    # Wenzhou: tags, and the care-matching quota of 5 calls a day.
    elderly = [p for p in people if tags(p) and "elderly" in tags(p)[0][1]][:2]
    with connect(server.uri, "platform", "platform-demo", "care-matching") as conn:
        for p in elderly + people[:3]:
            assert rows(conn, "SELECT * FROM care_tags(?)", (p,)) == tags(p), p
        text = failure(conn, f"SELECT * FROM care_tags('{people[0]}')")
        assert "max_calls_per_day = 5" in text, text

    # Chengdu: a batch of identity checks, right and wrong names, and unknown numbers.
    pairs = [(p, residents[p]["name"]) for p in people[:50]]
    pairs += [(p, residents[p]["name"] + "x") for p in people[50:80]]
    pairs += [(f"11010119900101{i:04d}", "Wang Wei") for i in range(20)]
    import pyarrow as pa

    param = pa.record_batch(
        [pa.array([[p for p, _ in pairs]], pa.list_(pa.string())),
         pa.array([[n for _, n in pairs]], pa.list_(pa.string()))],
        names=["0", "1"],
    )
    with connect(server.uri, "platform", "platform-demo", "identity-verification") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM identity_check(?, ?)", param)
            got = {r["id_number"]: r["matched"] for r in cur.fetch_arrow_table().to_pylist()}
        assert got == {p: residents.get(p, {}).get("name") == n for p, n in pairs}
        assert sum(got.values()) == 50
        assert "not found" in failure(conn, "SELECT count(*) FROM civil.residents")

    # Huzhou, Dali, Zhuhai: the bank's three products.
    codes = sorted(enterprises)
    penalised = sorted({p["credit_code"] for p in penalties})
    closed = [c for c in codes if enterprises[c]["status"] != "active"][:1]
    with connect(server.uri, "banker", "banker-demo", "bank-credit") as conn:
        for b in sorted(buildings)[:6]:
            got = rows(conn, "SELECT * FROM building_carbon_grade(?)", (b,))
            want = carbon(b)
            if want is None:
                assert got == [], b
                continue
            (bid, value, g), = got
            assert bid == b and abs(value - want[0]) <= 0.051 and g == want[1], (b, got, want)
        for c in codes[:3] + penalised[:3] + closed:
            assert rows(conn, "SELECT * FROM supplier_rating(?)", (c,)) == rating(c), c
            (got,) = rows(conn, "SELECT * FROM enterprise_profile(?)", (c,))
            assert got[0] == c and tuple(got[1:]) == profile(c), c
        assert "not found" in failure(conn, "SELECT count(*) FROM housing.buildings")


def test_encoded_parameters_count_what_they_stand_for_and_explain_hides_the_product(server):
    """Attacker round 24: a dictionary-encoded list of 100 keys into one 100 KB text stands for
    10 MB in 100 KB; bound as one parameter it is refused past the parameter bound (twice
    max_sql_bytes, 2 MiB) as the 10 MB it stands for, before anything builds it. EXPLAIN FORMAT
    PGJSON printed a product's SQL and file path (the plan node's debug form)."""
    import pyarrow as pa

    keys = pa.array([0] * 100, pa.int32())
    encoded = pa.DictionaryArray.from_arrays(keys, pa.array(["y" * 100_000]))
    param = pa.record_batch(
        [pa.ListArray.from_arrays(pa.array([0, 100], pa.int32()), encoded)], names=["0"]
    )
    assert param.get_total_buffer_size() < 200_000
    with connect(server.uri, "caseworker", "caseworker-demo", "benefit-eligibility") as conn:
        with pytest.raises(adbc_driver_manager.Error) as e:
            with conn.cursor() as cur:
                cur.execute("SELECT cardinality(CAST(? AS VARCHAR[]))", param)
                cur.fetchall()
        assert "parameters: more than" in str(e.value), str(e.value)
        # A small one of the same shape is served.
        small = pa.record_batch(
            [pa.ListArray.from_arrays(
                pa.array([0, 3], pa.int32()),
                pa.DictionaryArray.from_arrays(pa.array([0, 0, 0], pa.int32()), pa.array(["z"])),
            )],
            names=["0"],
        )
        with conn.cursor() as cur:
            cur.execute("SELECT cardinality(CAST(? AS VARCHAR[]))", small)
            assert cur.fetchall() == [(3,)]
        for fmt in ["", "FORMAT INDENT ", "FORMAT TREE ", "FORMAT PGJSON ", "FORMAT GRAPHVIZ "]:
            plan = str(rows(conn, f"EXPLAIN {fmt}SELECT * FROM lapse_check('110101195001010000')"))
            assert "lapse_check" in plan, (fmt, plan)
            for inner in ["social_security", "contributions", "1900", ".toml", "status"]:
                assert inner not in plan, (fmt, inner, plan)
