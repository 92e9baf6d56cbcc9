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

from test_attacks import Server, connect, rows

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

POLICIES = """
@id("contribution-check-reads")
permit (principal == Lake::Product::"contribution_check",
        action in [Lake::Action::"query", Lake::Action::"read_column", Lake::Action::"read_row"],
        resource in Lake::Table::"social_security.contributions");

@id("scenario-products")
permit (principal, action == Lake::Action::"invoke", resource)
when { context.scenario has products && resource in context.scenario.products
       && principal in context.scenario.operator && context.now < context.scenario.expires };
"""


def add_product(root: Path):
    """What a policy admin does: the product file, its grants, and the scenario's approval."""
    config = root / "lakegate.toml"
    config.write_text(config.read_text() + '\n[products]\ndir = "products"\n')
    (root / "products").mkdir()
    (root / "products" / "contribution_check.toml").write_text(PRODUCT)
    policies = root / "policies"
    schema = (policies / "schema.cedarschema").read_text()
    assert "epsilon_budget?: decimal," in schema
    schema = schema.replace(
        "epsilon_budget?: decimal,",
        "epsilon_budget?: decimal,\n    products?: Set<Product>,\n    max_calls_per_day?: Long,",
    )
    (policies / "schema.cedarschema").write_text(schema)
    (policies / "policies.cedar").write_text((policies / "policies.cedar").read_text() + POLICIES)
    entities = json.loads((policies / "entities.json").read_text())
    for e in entities:
        if e["uid"] == {"type": "Lake::Scenario", "id": "bank-credit"}:
            e["attrs"]["products"] = [
                {"__entity": {"type": "Lake::Product", "id": "contribution_check"}}
            ]
    (policies / "entities.json").write_text(json.dumps(entities, indent=2))


class ProductServer(Server):
    def __init__(self, root):
        # Build the demo, add the product, then serve.
        self._root = root
        super().__init__(root)

    def start(self):
        if not (self._root / "products").exists():
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
