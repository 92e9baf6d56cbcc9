//! Data product calls (`policy-model.md` §7, issue 19's speed targets): a verification product
//! over a 10-million-row register, called by one and by eight ADBC clients, and a batch call of
//! 10,000 people; DuckDB answers the same lookup in-process on the same Parquet files.
//!
//! The register is written in key order, 100,000 rows per file, so that a lookup by person
//! prunes to one file by the Delta log's statistics — as a department's table sorted by its
//! subject key would be.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};

/// The register, `registry.people`.
pub const TABLE: &str = "registry.people";
/// The bench operator (a local benchmark lake only).
pub const USER: &str = "operator";
/// Its password.
pub const PASSWORD: &str = "operator-bench";
/// The scenario that approves both products.
pub const SCENARIO: &str = "verification";
/// Rows per file.
const FILE_ROWS: usize = 100_000;

/// The person id of row `i`: sorted as the rows are.
pub fn person_id(i: usize) -> String {
    format!("P{i:011}")
}

/// Whether person `i` is active (the others lapsed): the answer every call is checked against.
pub fn active(i: usize) -> bool {
    !i.is_multiple_of(7)
}

const SINGLE: &str = r#"description = "Is this person on the register, and active?"
sql = """
SELECT person_id, status = 'active' AS active
FROM registry.people WHERE person_id = $person_id
"""
[params]
person_id = "string"
[review]
max_rows = 1
"#;

const BATCH: &str = r#"description = "For each person of a list: on the register, and active?"
sql = """
SELECT p.person_id, p.status = 'active' AS active
FROM (SELECT unnest($person_id) AS person_id) k
JOIN registry.people p ON p.person_id = k.person_id
"""
[params]
person_id = "list<string>"
[review]
max_rows = 1
batch_key = "person_id"
"#;

const SCHEMA: &str = r#"namespace Lake {
  entity Org;
  entity User in [Org];
  entity Scenario {
    purpose: String,
    operator: Org,
    expires: datetime,
    tables: Set<Table>,
    products?: Set<Product>,
    max_calls_per_day?: Long,
  };
}
"#;

const POLICIES: &str = r#"// The products read the register with their own rights; the operator only calls them.
@id("products-read-the-register")
permit (principal is Lake::Product,
        action in [Lake::Action::"query", Lake::Action::"read_column"],
        resource in Lake::Table::"registry.people");

@id("products-rows")
permit (principal is Lake::Product, action == Lake::Action::"read_row", resource);

@id("scenario-products")
permit (principal, action == Lake::Action::"invoke", resource)
when {
  context.scenario has products && resource in context.scenario.products &&
  principal in context.scenario.operator && context.now < context.scenario.expires
};
"#;

fn entities() -> serde_json::Value {
    serde_json::json!([
        {"uid": {"type": "Lake::Org", "id": "bank"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Lake::User", "id": USER}, "attrs": {},
         "parents": [{"type": "Lake::Org", "id": "bank"}]},
        {"uid": {"type": "Lake::Scenario", "id": SCENARIO},
         "attrs": {"purpose": "identity verification", "operator": {"__entity": {"type": "Lake::Org", "id": "bank"}},
                   "expires": {"__extn": {"fn": "datetime", "arg": "2099-01-01"}},
                   "tables": [],
                   "products": [{"__entity": {"type": "Lake::Product", "id": "verify_person"}},
                                {"__entity": {"type": "Lake::Product", "id": "verify_people"}}]},
         "parents": []}
    ])
}

/// Writes the register with `rows` rows and the set-up that serves it into `dir`, unless the
/// register already has that many rows (the set-up is written again either way).
pub async fn generate(dir: &Path, rows: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    write_setup(&dir)?;
    let path = dir.join("lake").join("registry").join("people");
    let Some(mut table) = crate::tpch::fresh_table(&path, rows)? else {
        return Ok(());
    };
    let districts = [
        "Chaoyang",
        "Haidian",
        "Dongcheng",
        "Xicheng",
        "Fengtai",
        "Tongzhou",
    ];
    let mut start = 0usize;
    while start < rows {
        let n = FILE_ROWS.min(rows - start);
        let range = start..start + n;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "person_id",
                Arc::new(StringArray::from_iter_values(range.clone().map(person_id))) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    range.clone().map(|i| format!("Person {}", i % 100_003)),
                )) as ArrayRef,
            ),
            (
                "district",
                Arc::new(StringArray::from_iter_values(
                    range.clone().map(|i| districts[i % districts.len()]),
                )) as ArrayRef,
            ),
            (
                "birth_year",
                Arc::new(Int64Array::from_iter_values(
                    range.clone().map(|i| 1940 + (i % 70) as i64),
                )) as ArrayRef,
            ),
            (
                "status",
                Arc::new(StringArray::from_iter_values(range.map(|i| {
                    if active(i) {
                        "active"
                    } else {
                        "lapsed"
                    }
                }))) as ArrayRef,
            ),
        ])?;
        table = crate::tpch::write_part(table, vec![batch], start == 0).await?;
        start += n;
    }
    crate::tpch::mark_written(&path, rows)
}

fn write_setup(dir: &Path) -> anyhow::Result<()> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA)?;
    std::fs::write(policies.join("policies.cedar"), POLICIES)?;
    std::fs::write(
        policies.join("entities.json"),
        serde_json::to_string_pretty(&entities())?,
    )?;
    let products = dir.join("products");
    std::fs::create_dir_all(&products)?;
    std::fs::write(products.join("verify_person.toml"), SINGLE)?;
    std::fs::write(products.join("verify_people.toml"), BATCH)?;
    std::fs::write(
        dir.join("lakegate.toml"),
        format!(
            "# Written by `lakegate-bench products`. Paths are relative to this file.\n\n\
             [lake]\nroot = \"lake\"\n\n[lake.tables.\"{TABLE}\"]\nsubject_key = \"person_id\"\n\n\
             [policy]\ndir = \"policies\"\n\n[products]\ndir = \"products\"\n\n\
             [audit]\ndir = \"audit\"\n\n\
             [[users]]\nname = \"{USER}\"  # password: {PASSWORD}\npassword_hash = \"{}\"\n",
            flight_server::auth::hash_password(PASSWORD)
        ),
    )?;
    Ok(())
}

/// Latencies of one way of calling, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// What was measured.
    pub what: String,
    /// Calls timed (for a batch: batch calls).
    pub calls: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Calls (for a batch: subjects) per second over the timed span.
    pub per_s: f64,
}

/// What `python/products.py` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProductsReport {
    /// Rows of the register.
    pub rows: u64,
    /// One line per way of calling.
    pub figures: Vec<Latency>,
}

/// Serves the bench dir in-process and runs the Python clients against it.
pub async fn run(
    dir: &Path,
    rows: usize,
    python: &Path,
    calls: usize,
    clients: usize,
    batch: usize,
    accelerate: bool,
) -> anyhow::Result<ProductsReport> {
    let dir = std::fs::canonicalize(dir)?;
    let mut config = lake_config::Config::load(&dir.join("lakegate.toml"))?;
    if accelerate {
        // The register held in memory, its subject key indexed (issue 20's point lookups).
        config.acceleration = Some(lake_config::AccelerationConfig {
            max_bytes: 8 << 30,
            tables: vec!["registry.people".into()],
            hot: false,
        });
    }
    let (addr, tx) = crate::wire::serve(&config).await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/products.py");
    let parquet = dir.join("lake").join("registry").join("people");
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .args(["--endpoint", &format!("grpc://{addr}")])
        .args([
            "--user",
            USER,
            "--password",
            PASSWORD,
            "--scenario",
            SCENARIO,
        ])
        .args(["--rows", &rows.to_string()])
        .args(["--calls", &calls.to_string()])
        .args(["--clients", &clients.to_string()])
        .args(["--batch", &batch.to_string()])
        .arg("--parquet")
        .arg(&parquet)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    let _ = tx.send(());
    if !out.status.success() {
        anyhow::bail!("the product clients failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("products.py printed no JSON report")
}
