//! The enforcement matrix as sqllogictest files, read as specifications: each file
//! `tests/slt/<user>@<scenario>.slt` runs against the demo lake's gateway as that user under that
//! scenario, every statement planned, decided, audited and executed as a Flight SQL call's is.
//! Allowed results are listed; refusals are `statement error` records with the error's text.
//!
//! `LAKEGATE_SLT_COMPLETE=1 cargo test -p lakegate-tests --test slt` rewrites each file with the
//! results the gateway gives now (as DataFusion's `--complete`): read the diff before committing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::TryStreamExt;
use gateway::{Gateway, Principal};
use sqllogictest::{DBOutput, DefaultColumnType};

/// The gateway as one user under one scenario.
struct AsUser {
    gateway: Arc<Gateway>,
    who: Principal,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

/// The rows as text: NULL for nulls, `(empty)` for empty strings (sqllogictest's convention),
/// and a multi-line value (an EXPLAIN plan) one row per line.
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..b.num_rows() {
            let values: Vec<String> = formatters
                .iter()
                .map(|f| match f.value(row).to_string() {
                    s if s.is_empty() => "(empty)".to_string(),
                    s => s,
                })
                .collect();
            if values.iter().any(|v| v.contains('\n')) {
                let lines: Vec<Vec<&str>> = values.iter().map(|v| v.lines().collect()).collect();
                let most = lines.iter().map(Vec::len).max().unwrap_or(0);
                for i in 0..most {
                    out.push(
                        lines
                            .iter()
                            .map(|l| l.get(i).map_or(String::new(), |s| s.trim_end().to_string()))
                            .collect(),
                    );
                }
            } else {
                out.push(values);
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for AsUser {
    type Error = Refused;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Refused> {
        let refused = |e: gateway::GatewayError| Refused(e.to_string());
        let query = self
            .gateway
            .prepare_audited(&self.who, sql, None)
            .await
            .map_err(refused)?;
        let types = query
            .schema()
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let batches: Vec<RecordBatch> = query
            .execute()
            .await
            .map_err(refused)?
            .try_collect()
            .await
            .map_err(|e| Refused(e.to_string()))?;
        Ok(DBOutput::Rows {
            types,
            rows: rows(&batches),
        })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(d: std::time::Duration) {
        tokio::time::sleep(d).await;
    }
}

/// `<user>@<scenario>` from a file's name.
fn principal(file: &Path) -> Principal {
    let stem = file.file_stem().unwrap().to_str().unwrap();
    let (user, scenario) = stem
        .split_once('@')
        .unwrap_or_else(|| panic!("{}: name it <user>@<scenario>.slt", file.display()));
    Principal {
        user: user.into(),
        scenario: Some(scenario.into()),
    }
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enforcement_matrix_holds() {
    let mut config =
        lake_config::Config::load(&lakegate_tests::shared_demo().join("lakegate.toml")).unwrap();
    config.audit.dir = lakegate_tests::scratch_dir("lakegate-");
    let gateway = Arc::new(Gateway::open(&config).await.unwrap());
    let complete = std::env::var_os("LAKEGATE_SLT_COMPLETE").is_some();
    let mut failures = Vec::new();
    for file in files() {
        let (gateway, who) = (gateway.clone(), principal(&file));
        let mut runner = sqllogictest::Runner::new(move || {
            let db = AsUser {
                gateway: gateway.clone(),
                who: who.clone(),
            };
            async move { Ok::<_, Refused>(db) }
        });
        if complete {
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap();
        } else if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{}: {}", file.display(), e.display(false)));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
