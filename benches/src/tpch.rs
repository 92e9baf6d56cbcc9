//! TPC-H data as Delta tables, and the lakegate set-up the benchmarks serve it with.
//!
//! ```text
//! <dir>/lake/tpch/<table>/   Delta tables written with delta-rs from tpchgen's Arrow batches
//!                            (or s3://bucket/prefix/tpch/<table>/, see [`LakeSpec`])
//! <dir>/parquet/<table>/     for a lake on S3: local copies of its Parquet files, for DuckDB
//! <dir>/manifest.json        scale factor, lake and, per table, the Parquet files of its snapshot
//! <dir>/lakegate.toml        one user, two scenarios (permissive and realistic)
//! <dir>/policies/            schema.cedarschema, policies.cedar, entities.json
//! <dir>/audit/               the audit folder
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::protocol::SaveMode;
use serde::{Deserialize, Serialize};

/// The bench user's login.
pub const USER: &str = "analyst";
/// The bench user's password (a local benchmark lake only).
pub const PASSWORD: &str = "analyst-bench";
/// Mode (b): every table, column and row.
pub const PERMISSIVE: &str = "tpch-open";
/// Mode (c): scope, masks, a row filter and an aggregate-only column.
pub const REALISTIC: &str = "tpch-policed";

/// The nations whose customers the realistic scenario may see: AMERICA and EUROPE.
pub const REALISTIC_NATIONS: [i64; 10] = [1, 2, 3, 17, 24, 6, 7, 19, 22, 23];

/// The eight tables and their subject keys (used by the aggregate-only rule).
pub const TABLES: [(&str, &str); 8] = [
    ("nation", "n_nationkey"),
    ("region", "r_regionkey"),
    ("part", "p_partkey"),
    ("supplier", "s_suppkey"),
    ("partsupp", "ps_partkey"),
    ("customer", "c_custkey"),
    ("orders", "o_custkey"),
    ("lineitem", "l_orderkey"),
];

/// Where `generate` writes the tables: the bench dir's `lake/` folder, or a prefix on an
/// S3-compatible server. Credentials are never written down: the gateway and the writer take
/// them from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (as `[lake.s3]` documents).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LakeSpec {
    /// `s3://bucket/prefix`; `None`: `<dir>/lake`.
    pub s3_root: Option<String>,
    /// `[lake.s3] endpoint`, e.g. `http://127.0.0.1:3900`.
    pub endpoint: Option<String>,
    /// `[lake.s3] region`.
    pub region: Option<String>,
    /// `[lake.s3] allow_http`: a plain-HTTP endpoint (a server on loopback).
    #[serde(default)]
    pub allow_http: bool,
}

/// What `generate` wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The TPC-H scale factor.
    pub scale_factor: f64,
    /// Where the tables are.
    #[serde(default)]
    pub lake: LakeSpec,
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
    /// Per table, the absolute paths of the Parquet files of its Delta snapshot (local copies
    /// when the lake is on S3): what the DuckDB mode reads.
    pub files: BTreeMap<String, Vec<PathBuf>>,
}

impl Manifest {
    /// Reads `<dir>/manifest.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no benchmark lake at {}: run `lakegate-bench gen`",
                dir.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The lake folder under a bench dir.
pub fn lake_dir(dir: &Path) -> PathBuf {
    dir.join("lake")
}

/// The URL of a table folder (an absolute path).
pub fn table_url(path: &Path) -> anyhow::Result<url::Url> {
    url::Url::from_directory_path(path)
        .map_err(|_| anyhow::anyhow!("{} is not an absolute path", path.display()))
}

/// A table folder to write `rows` rows into: `None` when it already holds them (its marker says
/// so), else emptied and opened for writing; [`mark_written`] once every part is written.
pub fn fresh_table(path: &Path, rows: usize) -> anyhow::Result<Option<deltalake::DeltaTable>> {
    if path.join(format!("_rows_{rows}")).exists() {
        return Ok(None);
    }
    if path.exists() {
        std::fs::remove_dir_all(path)?;
    }
    std::fs::create_dir_all(path)?;
    Ok(Some(
        deltalake::DeltaTableBuilder::from_url(table_url(path)?)?.build()?,
    ))
}

/// Marks a table folder [`fresh_table`] opened as holding `rows` rows.
pub fn mark_written(path: &Path, rows: usize) -> anyhow::Result<()> {
    std::fs::write(path.join(format!("_rows_{rows}")), b"")?;
    Ok(())
}

/// Writes one part of a table: the first part replaces whatever is there, later ones append, so
/// that a large table never has to be in memory at once.
pub async fn write_part(
    table: deltalake::DeltaTable,
    batches: Vec<RecordBatch>,
    first: bool,
) -> anyhow::Result<deltalake::DeltaTable> {
    let url = table.table_url().clone();
    table
        .write(batches)
        .with_save_mode(if first {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        })
        .await
        .with_context(|| format!("cannot write {url}"))
}

/// Generates TPC-H at `scale_factor` into `<dir>/lake` unless the same scale factor is already
/// there, and (re)writes the configuration and policies. Returns the manifest.
pub async fn generate(dir: &Path, scale_factor: f64) -> anyhow::Result<Manifest> {
    generate_in(dir, scale_factor, &LakeSpec::default()).await
}

/// [`generate`] into `lake`.
pub async fn generate_in(
    dir: &Path,
    scale_factor: f64,
    lake: &LakeSpec,
) -> anyhow::Result<Manifest> {
    if scale_factor <= 0.0 {
        bail!("the scale factor must be positive, e.g. 0.1");
    }
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    if let Ok(m) = Manifest::read(&dir) {
        if m.scale_factor == scale_factor && m.lake == *lake {
            write_setup_for(&dir, lake)?;
            return Ok(m);
        }
    }
    let _ = std::fs::remove_file(dir.join("manifest.json"));
    for folder in [lake_dir(&dir), dir.join("parquet")] {
        if folder.exists() {
            std::fs::remove_dir_all(&folder)?;
        }
    }
    let config = lake_config::Config::load(&write_setup_for(&dir, lake)?)?;
    let mut options: HashMap<String, String> = config
        .lake
        .s3
        .as_ref()
        .map(|s3| s3.storage_options().into_iter().collect())
        .unwrap_or_default();
    if lake.s3_root.is_some() {
        // `gen` is the only writer; see shared notes on Garage and conditional puts.
        options.insert("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into());
    }
    let mut manifest = Manifest {
        scale_factor,
        lake: lake.clone(),
        rows: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    for (table, _) in TABLES {
        let started = std::time::Instant::now();
        let url = config.lake.root.join(&format!("tpch/{table}/"))?;
        if let Ok(path) = url.to_file_path() {
            std::fs::create_dir_all(path)?;
        }
        let copies = dir.join("parquet").join(table);
        let (rows, files) = write_table(url, &options, table, scale_factor, &copies).await?;
        eprintln!(
            "  tpch.{table}: {rows} rows, {} file(s), {:.1} s",
            files.len(),
            started.elapsed().as_secs_f64()
        );
        manifest.rows.insert(table.to_string(), rows);
        manifest.files.insert(table.to_string(), files);
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

/// Rows per generator part: large tables are written in several commits so that memory stays
/// bounded at any scale factor.
const ROWS_PER_PART: f64 = 4_000_000.0;

fn approx_rows(table: &str, sf: f64) -> f64 {
    match table {
        "lineitem" => 6_000_000.0 * sf,
        "orders" => 1_500_000.0 * sf,
        "partsupp" => 800_000.0 * sf,
        "customer" => 150_000.0 * sf,
        "part" => 200_000.0 * sf,
        "supplier" => 10_000.0 * sf,
        _ => 25.0,
    }
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>>;

fn batches(table: &str, sf: f64, part: i32, parts: i32) -> Batches {
    use tpchgen::generators::*;
    use tpchgen_arrow::*;
    const BATCH: usize = 65_536;
    match table {
        "nation" => {
            Box::new(NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(BATCH))
        }
        "region" => {
            Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(BATCH))
        }
        "part" => {
            Box::new(PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(BATCH))
        }
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(BATCH),
        ),
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(BATCH),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(BATCH),
        ),
        "orders" => {
            Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(BATCH))
        }
        "lineitem" => Box::new(
            LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(BATCH),
        ),
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

/// Delta stores strings as `string`: write `Utf8` rather than tpchgen's `Utf8View`.
fn plain_strings(batch: RecordBatch) -> anyhow::Result<RecordBatch> {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Writes one table at `url`; returns its rows and the local Parquet files of its snapshot (for
/// a table on S3, copies made in `copies`).
async fn write_table(
    url: url::Url,
    options: &HashMap<String, String>,
    table: &str,
    sf: f64,
    copies: &Path,
) -> anyhow::Result<(u64, Vec<PathBuf>)> {
    let parts = (approx_rows(table, sf) / ROWS_PER_PART).ceil().max(1.0) as i32;
    let mut delta = deltalake::DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(options.clone())
        .build()?;
    // A table left on S3 by an earlier `gen` is loaded, then overwritten.
    if delta.verify_deltatable_existence().await? {
        delta.load().await?;
    }
    let mut rows = 0u64;
    for part in 1..=parts {
        let chunk: Vec<RecordBatch> = batches(table, sf, part, parts)
            .map(|b| plain_strings(b?))
            .collect::<Result<_, _>>()?;
        rows += chunk.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        delta = write_part(delta, chunk, part == 1).await?;
    }
    let mut files = Vec::new();
    let local_root = url.to_file_path().ok();
    let store = delta.object_store();
    for path in delta.get_files_by_partitions(&[]).await? {
        match &local_root {
            Some(root) => files.push(root.join(path.as_ref())),
            None => {
                use object_store::ObjectStoreExt;
                let name = path
                    .filename()
                    .with_context(|| format!("a data file of {url} has no name: {path}"))?;
                std::fs::create_dir_all(copies)?;
                let bytes = store.get(&path).await?.bytes().await?;
                let local = copies.join(name);
                std::fs::write(&local, &bytes)?;
                files.push(local);
            }
        }
    }
    files.sort();
    Ok((rows, files))
}

/// Writes `lakegate.toml` and the policy folder for a bench dir, for the lake its manifest
/// names (`<dir>/lake` without one).
pub fn write_setup(dir: &Path) -> anyhow::Result<PathBuf> {
    let lake = Manifest::read(dir).map(|m| m.lake).unwrap_or_default();
    write_setup_for(dir, &lake)
}

fn write_setup_for(dir: &Path, lake: &LakeSpec) -> anyhow::Result<PathBuf> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(policies.join("schema.cedarschema"), ADMIN_SCHEMA)?;
    std::fs::write(policies.join("policies.cedar"), POLICIES)?;
    std::fs::write(
        policies.join("entities.json"),
        serde_json::to_string_pretty(&entities())?,
    )?;
    let mut toml = String::from(
        "# Written by `lakegate-bench gen`. Paths are relative to this file.\n\n[lake]\n",
    );
    match &lake.s3_root {
        None => toml.push_str("root = \"lake\"\n\n"),
        Some(root) => {
            // Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never this file.
            toml.push_str(&format!("root = {}\n\n[lake.s3]\n", toml_string(root)));
            if let Some(e) = &lake.endpoint {
                toml.push_str(&format!("endpoint = {}\n", toml_string(e)));
            }
            if let Some(r) = &lake.region {
                toml.push_str(&format!("region = {}\n", toml_string(r)));
            }
            toml.push_str(&format!("allow_http = {}\n\n", lake.allow_http));
        }
    }
    for (table, key) in TABLES {
        toml.push_str(&format!(
            "[lake.tables.\"tpch.{table}\"]\nsubject_key = \"{key}\"\n\n"
        ));
    }
    toml.push_str(&format!(
        "[policy]\ndir = \"policies\"\n\n[audit]\ndir = \"audit\"\n\n\
         [[users]]\nname = \"{USER}\"  # password: {PASSWORD}\npassword_hash = \"{}\"\n",
        flight_server::auth::hash_password(PASSWORD)
    ));
    let path = dir.join("lakegate.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The configuration of a bench dir, with the listen address and memory limit the run wants.
pub fn config(dir: &Path, memory_limit: Option<u64>) -> anyhow::Result<lake_config::Config> {
    let mut config = lake_config::Config::load(&dir.join("lakegate.toml"))?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.execution.memory_limit_bytes = memory_limit;
    config.execution.spill_dir = memory_limit.map(|_| dir.join("spill"));
    if let Some(spill) = &config.execution.spill_dir {
        std::fs::create_dir_all(spill)?;
    }
    Ok(config)
}

/// `[acceleration]` holding every TPC-H table (8 GiB: SF 1 takes about 1.3 GiB, SF 10 does
/// not fit this machine's spare memory twice over, so it falls back to Parquet per table).
pub fn acceleration() -> lake_config::AccelerationConfig {
    lake_config::AccelerationConfig {
        max_bytes: 8 << 30,
        tables: TABLES.iter().map(|(t, _)| format!("tpch.{t}")).collect(),
        hot: false,
    }
}

/// Waits until `gateway`'s accelerated tables are loaded (or refused), printing what each
/// took; nothing when acceleration is off.
pub async fn held(gateway: &gateway::Gateway) -> anyhow::Result<()> {
    if gateway.lake().accelerator().is_none() {
        return Ok(());
    }
    for s in gateway.lake().load_accelerated().await? {
        eprintln!("acceleration: {} {:?}", s.table, s.state);
    }
    Ok(())
}

const ADMIN_SCHEMA: &str = include_str!("../policies/schema.cedarschema");

/// Two scenarios over the same tables. `tpch-open` sees everything (mode b); `tpch-policed` is a
/// realistic licence (mode c): customer names redacted, phones reduced to the country code,
/// customers only of the scenario's nations, part retail prices only in aggregates over at least
/// five parts.
pub const POLICIES: &str = include_str!("../policies/policies.cedar");

fn entities() -> serde_json::Value {
    use serde_json::json;
    let tables: Vec<serde_json::Value> = TABLES
        .iter()
        .map(|(t, _)| format!("tpch.{t}"))
        .chain([crate::wire::TABLE.to_string()])
        .map(|t| json!({"__entity": {"type": "Lake::Table", "id": t}}))
        .collect();
    let scenario = |id: &str, purpose: &str, nations: &[i64]| {
        json!({"uid": {"type": "Lake::Scenario", "id": id},
               "attrs": {"purpose": purpose,
                         "operator": {"__entity": {"type": "Lake::Org", "id": "bench_bank"}},
                         "expires": {"__extn": {"fn": "datetime", "arg": "2099-12-31T23:59:59Z"}},
                         "tables": tables,
                         "nations": nations},
               "parents": []})
    };
    let all: Vec<i64> = (0..25).collect();
    json!([
        {"uid": {"type": "Lake::Org", "id": "bench_bank"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Lake::User", "id": USER}, "attrs": {},
         "parents": [{"type": "Lake::Org", "id": "bench_bank"}]},
        scenario(PERMISSIVE, "benchmark: everything visible", &all),
        scenario(REALISTIC, "benchmark: a realistic licence", &REALISTIC_NATIONS),
    ])
}

/// Registers the raw Delta tables of a bench dir as `<schema>.<table>` in `ctx` (mode a and the
/// reference answers), scanned with `ctx`'s Parquet options.
pub async fn register_raw(
    ctx: &datafusion::prelude::SessionContext,
    dir: &Path,
    schema_name: &str,
) -> anyhow::Result<()> {
    use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
    let config = lake_config::Config::load(&dir.join("lakegate.toml"))?;
    let lake = catalog::Lake::open(&config.lake).await?;
    let schema = Arc::new(MemorySchemaProvider::new());
    for (table, _) in TABLES {
        let url = lake.table_url(&catalog::TableRef::new("tpch", table));
        let t =
            deltalake::open_table_with_storage_options(url, lake.storage_options().clone()).await?;
        // The scan takes its Parquet options (pushdown, view types) from `ctx`, as the gateway's
        // take theirs from `[execution]`: delta-rs's own default pushes filters into the reader.
        let provider = t
            .table_provider()
            .with_session(Arc::new(ctx.state()))
            .await?;
        schema.register_table(table.to_string(), provider)?;
    }
    ctx.catalog("datafusion")
        .context("no default catalog")?
        .register_schema(schema_name, schema)?;
    Ok(())
}
