//! Policy hot reload: a changed policy folder takes effect without a restart; a set that fails
//! validation is refused and the last good set keeps serving.

use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::DataType;

use lakegate_tests::{as_user, query, shared_demo, TestServer};

/// The first value of `sql`'s result. A query that the reload overtook between planning and
/// its first batch ends with "the policies changed while the query ran" (as it must): asked again.
async fn first_value(
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<String, String> {
    let mut tries = 0;
    let batches = loop {
        match query(c, sql).await {
            Err(e) if e.contains("policies changed while the query ran") && tries < 3 => tries += 1,
            other => break other?,
        }
    };
    let col = arrow::compute::cast(batches[0].column(0), &DataType::Utf8).unwrap();
    Ok(col.as_string::<i32>().value(0).to_string())
}

#[tokio::test]
async fn policy_changes_apply_without_a_restart_and_bad_sets_are_refused() {
    let demo = shared_demo();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for f in ["schema.cedarschema", "entities.json", "policies.cedar"] {
        std::fs::copy(demo.join("policies").join(f), policies.join(f)).unwrap();
    }
    let mut config = lake_config::Config::load(&demo.join("lakegate.toml")).unwrap();
    config.policy.dir = policies.clone();
    let server = TestServer::start_with(&config).await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let sql = "SELECT legal_rep_id FROM market.enterprises ORDER BY credit_code LIMIT 1";
    let hashed = first_value(&mut c, sql).await.unwrap();
    assert_eq!(hashed.len(), 64);

    // The admin changes the mask: the next queries see the new one within a few seconds.
    let text = std::fs::read_to_string(policies.join("policies.cedar")).unwrap();
    let changed = text.replacen(
        "@id(\"bank-identities-hashed\")\n@mask(\"hash\")",
        "@id(\"bank-identities-hashed\")\n@mask(\"show_last:4\")",
        1,
    );
    assert_ne!(text, changed);
    std::fs::write(policies.join("policies.cedar"), &changed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let masked = loop {
        let v = first_value(&mut c, sql).await.unwrap();
        if v.len() == 18 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        masked.starts_with("**************") && masked.len() == 18,
        "{masked}"
    );

    // A set that fails validation is refused; the last good set keeps serving.
    std::fs::write(
        policies.join("policies.cedar"),
        format!("{changed}\n@id(\"broken\")\npermit (principal, action == Lake::Action::\"read_row\", resource) when {{ resource.no_such_column == 1 }};\n"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(first_value(&mut c, sql).await.unwrap(), masked);

    // Fixing the folder takes effect again.
    std::fs::write(policies.join("policies.cedar"), &text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = first_value(&mut c, sql).await.unwrap();
        if v.len() == 64 {
            assert_eq!(v, hashed);
            break;
        }
        assert!(Instant::now() < deadline, "the fixed set was not loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rows of a prepared statement's result, once it runs (asked again when a reload
/// overtook it between planning and its first batch).
async fn prepared_rows(
    p: &mut arrow_flight::sql::client::PreparedStatement<tonic::transport::Channel>,
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
) -> Result<usize, String> {
    let mut tries = 0;
    loop {
        let info = p.execute().await.map_err(|e| e.to_string())?;
        match lakegate_tests::fetch(c, info).await {
            Err(e) if e.contains("policies changed while the query ran") && tries < 3 => tries += 1,
            other => return other.map(|b| lakegate_tests::rows(&b)),
        }
    }
}

/// Attacker round 26 M1 and L2: what a prepared statement was decided under includes the
/// scenario's `max_rows` (cut after prepare, it holds at the next execution) and the tables'
/// versions (a department's commit reaches the next execution, as it reaches the next query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_follows_a_narrowed_max_rows_and_new_commits() {
    let dir = lakegate_tests::scratch_dir("lakegate-reload-");
    let config = lakegate_tests::private_demo(&dir).await;
    let server = TestServer::start_with(&config).await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let mut all = c
        .prepare("SELECT * FROM market.enterprises".into(), None)
        .await
        .unwrap();
    let mut some = c
        .prepare("SELECT credit_code FROM market.penalties".into(), None)
        .await
        .unwrap();
    // A bare parameter among the result's columns (round 28 F9: after a commit the
    // statement was planned again and compared unbound, and refused at every execution).
    let mut tagged = c
        .prepare(
            "SELECT credit_code, $1 AS tag FROM market.penalties".into(),
            None,
        )
        .await
        .unwrap();
    let tag = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("$1", DataType::Int64, false),
        ])),
        vec![std::sync::Arc::new(arrow::array::Int64Array::from(vec![7]))],
    )
    .unwrap();
    tagged.set_parameters(tag).unwrap();
    assert_eq!(prepared_rows(&mut all, &mut c).await.unwrap(), 200);
    let before = prepared_rows(&mut some, &mut c).await.unwrap();
    assert!(before > 0);
    assert_eq!(prepared_rows(&mut tagged, &mut c).await.unwrap(), before);

    // A department commits more penalties: the prepared statement reads them.
    let url = url::Url::from_directory_path(
        config
            .lake
            .root
            .to_file_path()
            .unwrap()
            .join("market/penalties"),
    )
    .unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let batches: Vec<arrow::array::RecordBatch> = {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("p", table.table_provider().await.unwrap())
            .unwrap();
        ctx.sql("SELECT * FROM p LIMIT 3")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    };
    table
        .write(batches)
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .unwrap();
    assert_eq!(prepared_rows(&mut some, &mut c).await.unwrap(), before + 3);
    assert_eq!(
        prepared_rows(&mut tagged, &mut c).await.unwrap(),
        before + 3
    );

    // A department deletes the enterprises' log and writes the table anew up to the same
    // version number, without a quarter of the rows (the old data files stay, orphaned):
    // the prepared statement reads the new table, not the one it was planned on (attacker
    // round 28 F1: the number alone was compared).
    let enterprises = config
        .lake
        .root
        .to_file_path()
        .unwrap()
        .join("market/enterprises");
    let url = url::Url::from_directory_path(&enterprises).unwrap();
    let kept: Vec<arrow::array::RecordBatch> = {
        let table = deltalake::open_table(url.clone()).await.unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("e", table.table_provider().await.unwrap())
            .unwrap();
        ctx.sql("SELECT * FROM e LIMIT 150")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    };
    let version_before = deltalake::open_table(url.clone()).await.unwrap().version();
    std::fs::remove_dir_all(enterprises.join("_delta_log")).unwrap();
    let batch = arrow::compute::concat_batches(&kept[0].schema(), &kept).unwrap();
    flight_server::demo::write_delta_table(url.clone(), Default::default(), batch, "credit_code")
        .await
        .unwrap();
    let version_after = deltalake::open_table(url).await.unwrap().version();
    assert_eq!(version_before, version_after, "the same version number");
    assert_eq!(prepared_rows(&mut all, &mut c).await.unwrap(), 150);

    // The scenario's max_rows is cut to 5: the prepared statement is refused by it.
    let entities = config.policy.dir.join("entities.json");
    let text = std::fs::read_to_string(&entities).unwrap();
    assert!(text.contains("\"max_rows\": 100000"), "{text}");
    std::fs::write(
        &entities,
        text.replace("\"max_rows\": 100000", "\"max_rows\": 5"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let err = loop {
        match prepared_rows(&mut all, &mut c).await {
            Err(e) => break e,
            Ok(n) => {
                assert_eq!(n, 150);
                assert!(
                    Instant::now() < deadline,
                    "max_rows 5 never reached the statement"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(err.contains("max_rows (5)"), "{err}");
}
