//! The product and TLS wire runs at a tiny scale, untimed: the harness works and every answer
//! it checks is right (the figures themselves belong in RESULTS.md, never in a test).

mod common;

use lakegate_benches::{products, tpch, wire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_run_checks_every_answer_at_a_tiny_scale() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    products::generate(dir.path(), 250_000).await.unwrap();
    // Three files of the register, written in key order.
    let files = std::fs::read_dir(dir.path().join("lake/registry/people"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "parquet")
        })
        .count();
    assert_eq!(files, 3);
    // With the register held in memory: every answer is checked against the Parquet files by
    // the clients, so the key lookups answer as the Parquet scan does.
    let report = products::run(dir.path(), 250_000, &python, 20, 2, 300, true)
        .await
        .unwrap();
    let what: Vec<&str> = report.figures.iter().map(|f| f.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "verify_person, 1 ADBC client",
            "verify_person, 2 ADBC clients",
            "verify_people, one batch of 330 ids",
            "DuckDB in-process, the same lookup",
            "DuckDB in-process, a batch of 300 ids",
        ]
    );
    assert!(report
        .figures
        .iter()
        .all(|f| f.calls > 0 && f.p99_ms >= f.p50_ms));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_run_streams_over_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    tpch::generate(dir.path(), 0.01).await.unwrap();
    wire::generate(dir.path(), 20_000).await.unwrap();
    let python = common::python();
    let report = wire::run(dir.path(), 1, python.as_deref(), true)
        .await
        .unwrap();
    assert!(
        report.figures.iter().all(|f| f.rows == 20_000),
        "{report:?}"
    );
    let paths: Vec<&str> = report.figures.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"lakegate Flight SQL over TLS, Rust client"),
        "{paths:?}"
    );
    if python.is_some() {
        assert!(
            paths.contains(&"lakegate over TLS through ADBC into pyarrow"),
            "{paths:?}"
        );
    }
}
