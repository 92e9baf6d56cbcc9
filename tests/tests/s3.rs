//! The whole path against a real S3-compatible server (Garage, started on 127.0.0.1 by
//! `scripts/test.sh`): write a Delta table into a bucket, serve it, query it over Flight SQL,
//! append a commit, see it in the next query, and find the audit trail exported to Delta
//! tables in the same bucket.
//!
//! The test script exports `LAKEGATE_TEST_S3_ENDPOINT`, `..._BUCKET`, `..._KEY_ID` and
//! `..._SECRET`. Run alone without them the test says so and passes, unless
//! `LAKEGATE_REQUIRE_S3=1` (as the test script sets), where their absence fails it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::protocol::SaveMode;

use flight_server::demo::write_delta_table;
use lake_config::Config;
use lakegate_tests::{first_i64, pretty, query, TestServer};

struct S3 {
    endpoint: String,
    bucket: String,
    key_id: String,
    secret: String,
}

fn s3_from_env() -> Option<S3> {
    let var = |k: &str| std::env::var(format!("LAKEGATE_TEST_S3_{k}")).ok();
    Some(S3 {
        endpoint: var("ENDPOINT")?,
        bucket: var("BUCKET")?,
        key_id: var("KEY_ID")?,
        secret: var("SECRET")?,
    })
}

fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let n = ids.end - ids.start;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("district", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| if i % 2 == 0 { "Haidian" } else { "Chaoyang" })
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

const SCHEMA: &str = r#"namespace Lake {
  entity Org, Role;
  entity User in [Role, Org] { district: String };
  entity Scenario { purpose: String, operator: Org, expires: datetime, tables: Set<Table>, max_rows?: Long };
}"#;

const POLICIES: &str = r#"@id("scenario-scope")
permit (principal, action == Lake::Action::"query", resource)
when { resource in context.scenario.tables && principal in context.scenario.operator
       && context.now < context.scenario.expires };
@id("all-columns")
permit (principal, action == Lake::Action::"read_column", resource);
@id("all-rows")
permit (principal, action == Lake::Action::"read_row", resource);"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "Lake::Org", "id": "ops"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Lake::User", "id": "alice"}, "attrs": {"district": "Haidian"},
   "parents": [{"type": "Lake::Org", "id": "ops"}]},
  {"uid": {"type": "Lake::Scenario", "id": "s3-check"},
   "attrs": {"purpose": "S3 end to end", "operator": {"__entity": {"type": "Lake::Org", "id": "ops"}},
             "expires": {"__extn": {"fn": "datetime", "arg": "2099-01-01"}},
             "tables": [{"__entity": {"type": "Lake::Table", "id": "city.buildings"}}]},
   "parents": []}
]"#;

#[tokio::test]
async fn serve_a_delta_table_from_a_real_s3_server() {
    let Some(s3) = s3_from_env() else {
        assert!(
            std::env::var("LAKEGATE_REQUIRE_S3").as_deref() != Ok("1"),
            "LAKEGATE_REQUIRE_S3=1 but no LAKEGATE_TEST_S3_* variables: start the S3 server (scripts/test.sh does)"
        );
        eprintln!("skipped: no S3 server configured (run scripts/test.sh)");
        return;
    };
    // A fresh prefix per run, so reruns against the same bucket never see old data.
    let prefix = format!(
        "lake-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let root = format!("s3://{}/{prefix}/", s3.bucket);
    let writer_options: HashMap<String, String> = HashMap::from([
        ("aws_endpoint".into(), s3.endpoint.clone()),
        ("aws_region".into(), "garage".into()),
        ("aws_access_key_id".into(), s3.key_id.clone()),
        ("aws_secret_access_key".into(), s3.secret.clone()),
        ("aws_allow_http".into(), "true".into()),
        ("aws_virtual_hosted_style_request".into(), "false".into()),
        // One writer in this test; see shared notes on Garage and conditional puts.
        ("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into()),
    ]);
    let table_url = url::Url::parse(&format!("{root}city/buildings/")).unwrap();
    let table = write_delta_table(table_url, writer_options.clone(), batch(0..10), "id")
        .await
        .expect("write a Delta table to S3");

    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("policies.cedar"), POLICIES).unwrap();
    std::fs::write(policies.join("entities.json"), ENTITIES).unwrap();
    let config_text = format!(
        r#"[lake]
root = "{root}"
[lake.s3]
endpoint = "{}"
region = "garage"
allow_http = true
access_key_id = "{}"
secret_access_key = "{}"
[policy]
dir = "policies"
[audit]
segment_bytes = 4096
[[users]]
name = "alice"
password_hash = "{}"
"#,
        s3.endpoint,
        s3.key_id,
        s3.secret,
        flight_server::auth::hash_password("alice-pw")
    );
    let config = Config::parse(&config_text, None, dir.path(), &|_| None).unwrap();
    let server = TestServer::start_with(&config).await;
    let mut c = server.login("alice", "alice-pw").await;
    c.set_header("x-lakegate-scenario", "s3-check");

    let sql = "SELECT district, count(*) AS n, sum(id) AS s FROM city.buildings GROUP BY district ORDER BY district";
    let before = pretty(&query(&mut c, sql).await.expect("query over S3"));
    assert_eq!(
        before.trim(),
        "+----------+---+----+\n\
         | district | n | s  |\n\
         +----------+---+----+\n\
         | Chaoyang | 5 | 25 |\n\
         | Haidian  | 5 | 20 |\n\
         +----------+---+----+"
    );

    // A department appends a commit; the next query sees it without a restart.
    table
        .write(vec![batch(10..14)])
        .with_save_mode(SaveMode::Append)
        .await
        .expect("append to S3");
    let after = pretty(&query(&mut c, sql).await.unwrap());
    assert_eq!(
        after.trim(),
        "+----------+---+----+\n\
         | district | n | s  |\n\
         +----------+---+----+\n\
         | Chaoyang | 7 | 49 |\n\
         | Haidian  | 7 | 42 |\n\
         +----------+---+----+"
    );

    // An unchanged table is not loaded again at each query: the version's commit entry as
    // listed matches the one read at load (S3 lists times in milliseconds, HEAD in seconds).
    let lake = catalog::Lake::open(&config.lake).await.unwrap();
    let t = catalog::TableRef::new("city", "buildings");
    let a = lake.snapshot(&t).await.unwrap().unwrap();
    let b = lake.snapshot(&t).await.unwrap().unwrap();
    assert_eq!(a.version, b.version);
    assert!(std::sync::Arc::ptr_eq(&a.bounds, &b.bounds), "reloaded");

    // The audit trail is exported to the lake's own Delta tables in the bucket, with the
    // server's options: no unsafe rename; delta-rs commits with `If-None-Match` puts (which
    // Garage 2.5 answers 200 without enforcing: one writer per lake root there).
    let trail = url::Url::parse(&format!("{root}lakegate_audit/queries/")).unwrap();
    let reader_options: HashMap<String, String> = writer_options
        .into_iter()
        .filter(|(k, _)| k != "AWS_S3_ALLOW_UNSAFE_RENAME")
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exported = loop {
        // Each query adds records, so segments keep closing.
        query(&mut c, sql).await.unwrap();
        let n = exported_rows(&trail, &reader_options).await;
        if n >= 4 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(exported >= 4, "{exported} audit rows in {trail}");
}

/// Rows of alice's `allowed` records in the exported audit table (0 while it does not exist).
async fn exported_rows(table: &url::Url, options: &HashMap<String, String>) -> usize {
    let Ok(t) = deltalake::open_table_with_storage_options(table.clone(), options.clone()).await
    else {
        return 0;
    };
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("q", t.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT count(*) FROM q WHERE user = 'alice' AND decision = 'allowed'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    first_i64(&batches) as usize
}
