//! The harness on a lake in a real S3-compatible server (Garage, started on 127.0.0.1 by
//! `scripts/test.sh`), at TPC-H SF 0.01, untimed: `gen --s3` writes the Delta tables into the
//! bucket and local copies of their Parquet files for DuckDB, and every mode agrees — (a) and the
//! gateway modes reading the bucket, (f) the copies.
//!
//! Without the `LAKEGATE_TEST_S3_*` variables the test says so and passes, unless
//! `LAKEGATE_REQUIRE_S3=1` (as the test script sets). Its own test binary: it sets the AWS
//! credential variables the gateway reads before any other thread runs.

mod common;

use lakegate_benches::tpch;

fn s3_env(k: &str) -> Option<String> {
    std::env::var(format!("LAKEGATE_TEST_S3_{k}")).ok()
}

#[test]
fn every_mode_agrees_on_a_lake_in_s3() {
    let (Some(endpoint), Some(bucket), Some(key_id), Some(secret)) = (
        s3_env("ENDPOINT"),
        s3_env("BUCKET"),
        s3_env("KEY_ID"),
        s3_env("SECRET"),
    ) else {
        assert!(
            std::env::var("LAKEGATE_REQUIRE_S3").as_deref() != Ok("1"),
            "LAKEGATE_REQUIRE_S3=1 but no LAKEGATE_TEST_S3_* variables: start the S3 server (scripts/test.sh does)"
        );
        eprintln!("skipped: no S3 server configured (run scripts/test.sh)");
        return;
    };
    // The only test of this binary, before its runtime starts: no other thread reads the
    // environment while it is set.
    std::env::set_var("AWS_ACCESS_KEY_ID", key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // A fresh prefix per run, so reruns against the same bucket never see old data.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let lake = tpch::LakeSpec {
            s3_root: Some(format!("s3://{bucket}/bench-{nanos}")),
            endpoint: Some(endpoint),
            region: Some("garage".into()),
            allow_http: true,
        };
        let manifest = tpch::generate_in(dir.path(), 0.01, &lake).await.unwrap();
        assert_eq!(manifest.rows["customer"], 1500);
        assert!(
            !dir.path().join("lake").exists(),
            "the tables are in the bucket"
        );
        let copies = dir.path().join("parquet");
        for files in manifest.files.values() {
            assert!(!files.is_empty());
            assert!(files.iter().all(|f| f.starts_with(&copies) && f.exists()));
        }
        let config = std::fs::read_to_string(dir.path().join("lakegate.toml")).unwrap();
        assert!(config.contains("s3://"), "{config}");
        assert!(
            !config.contains(&key_id_of_env()),
            "no credential in the file"
        );

        common::every_mode_agrees(dir.path()).await;

        // The same scale factor and lake again: nothing is rewritten.
        let again = tpch::generate_in(dir.path(), 0.01, &lake).await.unwrap();
        assert_eq!(again, manifest);
    });
}

fn key_id_of_env() -> String {
    std::env::var("AWS_ACCESS_KEY_ID").unwrap()
}
