//! Data products (`policy-model.md` §7) over Flight SQL with the Rust client, on the canary lake
//! with products (`lakegate_tests::attack::build_with_products`): definer rights, calls with
//! literals and parameters, composition, refusals, EXPLAIN, the audit trail, revocation and
//! load-time refusals. Every byte the caller receives is searched for `CANARY`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use tonic::transport::Channel;

use lakegate_tests::attack::{self, ALICE_PASSWORD, CANARY, SCENARIO};
use lakegate_tests::{audit_records, column_strings, fetch, query, rows, set_scenario, TestServer};

type Client = FlightSqlServiceClient<Channel>;

async fn alice(server: &TestServer, scenario: &str) -> Client {
    let mut c = server.login("alice", ALICE_PASSWORD).await;
    let r = set_scenario(&mut c, scenario).await.unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    c
}

async fn lake() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = attack::build_with_products(dir.path()).await;
    (dir, config)
}

/// Everything a client sees of `sql` (FlightInfo, schemas, rows, or the error), searched for
/// canaries.
async fn seen(c: &mut Client, sql: &str) -> String {
    let text = lakegate_tests::seen(c, sql).await;
    assert!(!text.contains(CANARY), "{sql} leaked a canary:\n{text}");
    text
}

/// Edits the attributes of the scenario [`SCENARIO`] in the lake under `dir`.
fn edit_scenario(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    edit_scenario_named(dir, SCENARIO, edit)
}

/// Edits the attributes of the scenario `id` in the lake under `dir`.
fn edit_scenario_named(dir: &std::path::Path, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = dir.join("policies").join("entities.json");
    let mut entities: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let scenario = entities
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["uid"]["id"] == id)
        .unwrap();
    edit(&mut scenario["attrs"]);
    std::fs::write(&file, serde_json::to_string_pretty(&entities).unwrap()).unwrap();
}

/// Edits the `products` of the scenario [`SCENARIO`] in the lake under `dir`.
fn edit_scenario_products(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
    edit_scenario(dir, |attrs| edit(attrs["products"].as_array_mut().unwrap()));
}

#[tokio::test]
async fn calls_past_the_daily_quota_are_refused_before_they_run_and_every_run_is_billed() {
    let (dir, config) = lake().await;
    edit_scenario(dir.path(), |attrs| attrs["max_calls_per_day"] = 4.into());
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    for id in [1, 2] {
        let got = query(&mut c, &format!("SELECT * FROM employee_check({id})"))
            .await
            .unwrap();
        assert_eq!(rows(&got), 1);
    }
    // EXPLAIN runs nothing and costs nothing; a call that ran and was refused by max_rows
    // costs one (its failure tells as much as an answer).
    let plan = query(&mut c, "EXPLAIN SELECT * FROM employee_check(9)").await;
    assert!(plan.is_ok(), "{plan:?}");
    let e = query(&mut c, "SELECT * FROM all_ids(0)").await.unwrap_err();
    assert!(e.contains("max_rows"), "{e}");
    let got = query(&mut c, "SELECT people FROM diagnosis_count('Diabetes')")
        .await
        .unwrap();
    assert_eq!(column_strings(&got, 0), ["15"]);
    // Past the quota a call is refused before anything of it runs (at DoGet for a
    // statement), whatever it would have done: the same refusal for a call that would fail.
    let e = seen(&mut c, "SELECT * FROM employee_check(3)").await;
    assert!(
        e.contains("ERROR") && e.contains("max_calls_per_day = 4"),
        "{e}"
    );
    let e = seen(&mut c, "SELECT * FROM all_ids(0)").await;
    assert!(e.contains("max_calls_per_day = 4"), "{e}");
    // Queries that call no product go on.
    let n = query(&mut c, "SELECT count(*) FROM hr.employees")
        .await
        .unwrap();
    assert_eq!(column_strings(&n, 0), ["47"]);
    drop(c);
    drop(server);
    // The quota outlives a restart: the trail is the meter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    let e = seen(&mut c, "SELECT * FROM employee_check(4)").await;
    assert!(e.contains("max_calls_per_day = 4"), "{e}");
    drop(c);
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trail = audit_records(&dir.path().join("audit"));
    let runs: Vec<_> = trail.iter().filter(|r| r.kind == "call").collect();
    assert_eq!(runs.len(), 4, "{runs:#?}");
    assert_eq!(runs.iter().filter(|r| r.decision == "failed").count(), 1);
    let usage = gateway::audit::usage(&dir.path().join("audit"), Some(SCENARIO), None).unwrap();
    let calls = |p: &str| -> u64 { usage.iter().filter_map(|r| r.product_calls.get(p)).sum() };
    assert_eq!(calls("employee_check"), 2);
    assert_eq!(calls("diagnosis_count"), 1);
    assert_eq!(calls("all_ids"), 1);
}

#[tokio::test]
async fn a_product_answers_with_its_own_rights_and_shows_only_its_output() {
    let (dir, config) = lake().await;
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;

    // Employee 1 is in the first North group (Hypertension); alice may not read diagnoses raw.
    let one = query(&mut c, "SELECT * FROM employee_check(1)")
        .await
        .unwrap();
    assert_eq!(column_strings(&one, 0), ["1"]);
    assert_eq!(column_strings(&one, 1), ["true"]);
    let refused = seen(&mut c, "SELECT diagnosis FROM hr.employees WHERE id = 1").await;
    assert!(refused.starts_with("ERROR"), "{refused}");
    // Employee 50 is a South row, hidden from alice; the product reads every row.
    let hidden = query(&mut c, "SELECT count(*) FROM hr.employees WHERE id = 50")
        .await
        .unwrap();
    assert_eq!(column_strings(&hidden, 0), ["0"]);
    let south = query(&mut c, "SELECT hypertensive FROM employee_check(50)")
        .await
        .unwrap();
    assert_eq!(column_strings(&south, 0), ["false"]);
    // A count below alice's k of 10 comes from the product as it was approved.
    let rare = query(
        &mut c,
        "SELECT people FROM diagnosis_count('CANARY-DX-RARE')",
    )
    .await
    .unwrap();
    assert_eq!(column_strings(&rare, 0), ["3"]);

    // The output composes with the caller's SQL: filter, join with a table alice may read,
    // aggregate, alias.
    let joined = query(
        &mut c,
        "SELECT e.name, p.hypertensive FROM hr.employees e \
         JOIN employee_check(2) p ON e.id = p.id WHERE p.hypertensive",
    )
    .await
    .unwrap();
    assert_eq!(column_strings(&joined, 0), ["Employee 2"]);
    let counted = query(
        &mut c,
        "SELECT count(*) FROM (SELECT * FROM employee_check(3) UNION ALL \
         SELECT * FROM employee_check(40)) x WHERE x.hypertensive",
    )
    .await
    .unwrap();
    assert_eq!(column_strings(&counted, 0), ["1"]);

    // Parameters of a prepared statement, as ADBC and JDBC send them.
    let mut stmt = c
        .prepare("SELECT hypertensive FROM employee_check($1)".into(), None)
        .await
        .unwrap();
    let fields = stmt.parameter_schema().unwrap().fields().clone();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].data_type(), &DataType::Int64);
    for (id, expected) in [(1i64, "true"), (36, "false")] {
        let params = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("0", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![id]))],
        )
        .unwrap();
        stmt.set_parameters(params).unwrap();
        let got = fetch(&mut c, stmt.execute().await.unwrap()).await.unwrap();
        assert_eq!(column_strings(&got, 0), [expected], "id {id}");
    }
    let mut by_name = c
        .prepare("SELECT people FROM diagnosis_count(?)".into(), None)
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("0", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec!["Diabetes"]))],
    )
    .unwrap();
    by_name.set_parameters(params).unwrap();
    let got = fetch(&mut c, by_name.execute().await.unwrap())
        .await
        .unwrap();
    assert_eq!(column_strings(&got, 0), ["15"]);

    // EXPLAIN shows the call, never the product's plan, tables or columns.
    for sql in [
        "EXPLAIN SELECT * FROM employee_check(1)",
        "EXPLAIN FORMAT TREE SELECT * FROM employee_check(1)",
        "EXPLAIN SELECT p.* FROM org.departments d JOIN employee_check(1) p ON d.id = p.id",
    ] {
        let text = seen(&mut c, sql).await;
        assert!(text.contains("ProductCall"), "{sql}: {text}");
        for inner in ["employees", "diagnosis", "Hypertension", "salary"] {
            assert!(!text.contains(inner), "{sql} shows `{inner}`:\n{text}");
        }
    }
    let alone = seen(&mut c, "EXPLAIN SELECT * FROM employee_check(1)").await;
    assert!(!alone.contains("SecureScan"), "{alone}");

    // The products the session may call, and nothing of their insides.
    let listed = query(
        &mut c,
        "SELECT name, parameters, output, max_rows FROM lakegate.products ORDER BY name",
    )
    .await
    .unwrap();
    assert_eq!(
        column_strings(&listed, 0),
        ["all_ids", "diagnosis_count", "employee_check"]
    );
    assert_eq!(column_strings(&listed, 1)[2], "id int");
    assert_eq!(
        column_strings(&listed, 2)[2],
        "id Int64, hypertensive Boolean"
    );
    assert_eq!(column_strings(&listed, 3), ["5", "1", "1"]);
    let all = seen(&mut c, "SELECT * FROM lakegate.products").await;
    for inner in ["hr.employees", "diagnosis =", "salary", "SELECT"] {
        assert!(!all.contains(inner), "the listing shows `{inner}`:\n{all}");
    }
    let mut payroll = alice(&server, "payroll").await;
    let theirs = query(&mut payroll, "SELECT name FROM lakegate.products")
        .await
        .unwrap();
    assert_eq!(column_strings(&theirs, 0), ["salary_band"]);

    // The decision record names the product, its version and its arguments.
    drop(c);
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = audit_records(&dir.path().join("audit"));
    let calls: Vec<&String> = records
        .iter()
        .filter(|r| r.kind == "decision")
        .flat_map(|r| &r.products)
        .collect();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("employee_check@") && c.ends_with("(Int64(1))")),
        "{calls:?}"
    );
    // One `call` record per released call, with its output's digest, linked to its statement.
    let released: Vec<&gateway::audit::AuditRecord> =
        records.iter().filter(|r| r.kind == "call").collect();
    let first = released
        .iter()
        .find(|r| r.sql.starts_with("employee_check@") && r.sql.ends_with("(1)"))
        .expect("a call record of employee_check(1)");
    assert_eq!(first.rows_out, Some(1));
    assert_eq!(first.result_digest.as_ref().map(|d| d.len()), Some(64));
    assert_eq!(first.policy_ids, ["scenario-products"]);
    assert!(records
        .iter()
        .any(|r| r.kind == "decision" && r.query_id == first.query_id));
    // EXPLAIN runs nothing and releases nothing: every call record is of a query that ran.
    assert!(released.len() >= 8, "{}", released.len());
}

#[tokio::test]
async fn calls_are_refused_clearly_and_release_nothing_past_the_product_limit() {
    let (_dir, config) = lake().await;
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;

    let err = |text: String| {
        assert!(text.starts_with("ERROR"), "{text}");
        text
    };
    let e = err(seen(&mut c, "SELECT * FROM employee_check()").await);
    assert!(
        e.contains("employee_check takes 1 argument(s) (id int), not 0"),
        "{e}"
    );
    // Refused, not converted: text for an int, a fraction for an int, a number for a string.
    for (sql, why) in [
        (
            "SELECT * FROM employee_check('one')",
            "argument 1 (id) must be an int, not Utf8",
        ),
        (
            "SELECT * FROM employee_check('1')",
            "argument 1 (id) must be an int, not Utf8",
        ),
        (
            "SELECT * FROM employee_check(1.7)",
            "argument 1 (id) must be an int, not Float64",
        ),
        (
            "SELECT * FROM diagnosis_count(1)",
            "argument 1 (diagnosis) must be a string, not Int64",
        ),
    ] {
        let e = err(seen(&mut c, sql).await);
        assert!(e.contains(why), "{sql}: {e}");
    }
    let e = err(seen(
        &mut c,
        "SELECT * FROM employee_check((SELECT max(id) FROM hr.employees))",
    )
    .await);
    assert!(e.contains("must be a literal or a parameter"), "{e}");
    let e = err(seen(&mut c, "SELECT * FROM employee_check(id)").await);
    assert!(!e.contains("hypertensive"), "{e}");

    // Bound parameters are as strict: 2.9 for an int is refused, not run as 2.
    let mut stmt = c
        .prepare("SELECT * FROM employee_check(?)".into(), None)
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("0", DataType::Float64, true)])),
        vec![Arc::new(arrow::array::Float64Array::from(vec![2.9]))],
    )
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let e = match stmt.execute().await {
        Err(e) => e.to_string(),
        Ok(info) => fetch(&mut c, info).await.unwrap_err(),
    };
    assert!(
        e.contains("data product employee_check: argument 1 (id) must be an int, not Float64"),
        "{e}"
    );

    // A call in the recursive part of a query runs afresh each round (attacker round 22 M4:
    // the second round panicked inside the product's plan).
    let rounds = query(
        &mut c,
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT r.n + 1 FROM r \
         JOIN employee_check(1) p ON p.hypertensive WHERE r.n < 3) SELECT n FROM r ORDER BY n",
    )
    .await
    .unwrap();
    assert_eq!(column_strings(&rounds, 0), ["1", "2", "3"]);

    // A parameter is a value, never SQL.
    let injected = seen(
        &mut c,
        "SELECT people FROM diagnosis_count('x'' OR ''1''=''1')",
    )
    .await;
    assert!(injected.contains("| 0 "), "{injected}");

    // More rows than the product's max_rows: refused, and not one row released.
    let info = c
        .execute("SELECT * FROM all_ids(0)".into(), None)
        .await
        .unwrap();
    let e = fetch(&mut c, info).await.unwrap_err();
    assert!(e.contains("max_rows = 5"), "{e}");
    let five = query(&mut c, "SELECT * FROM all_ids(67)").await.unwrap();
    assert_eq!(rows(&five), 5);

    // A product the session may not invoke is an unknown function, word for word.
    let guessed = err(seen(&mut c, "SELECT * FROM salary_band(1)").await);
    let unknown = err(seen(&mut c, "SELECT * FROM salary_bond(1)").await);
    assert_eq!(
        guessed.replace("salary_band", "X"),
        unknown.replace("salary_bond", "X")
    );
    // Under the scenario that approves it, it answers.
    let mut payroll = alice(&server, "payroll").await;
    let band = query(&mut payroll, "SELECT band FROM salary_band(1)")
        .await
        .unwrap();
    assert_eq!(column_strings(&band, 0), ["3"]);
    let e = err(seen(&mut payroll, "SELECT * FROM employee_check(1)").await);
    assert!(e.contains("employee_check"), "{e}");
    // A scenario that approves a product and no table is a scenario: the product answers,
    // and no table exists in it.
    let mut verify = alice(&server, "verification").await;
    let one = query(&mut verify, "SELECT hypertensive FROM employee_check(1)")
        .await
        .unwrap();
    assert_eq!(column_strings(&one, 0), ["true"]);
    let e = err(seen(&mut verify, "SELECT count(*) FROM hr.employees").await);
    assert!(e.contains("not found"), "{e}");
}

#[tokio::test]
async fn a_withdrawn_approval_stops_prepared_calls() {
    let (dir, config) = lake().await;
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    let mut stmt = c
        .prepare("SELECT * FROM employee_check(1)".into(), None)
        .await
        .unwrap();
    let ticket = c
        .execute("SELECT * FROM employee_check(2)".into(), None)
        .await
        .unwrap();
    let got = fetch(&mut c, stmt.execute().await.unwrap()).await.unwrap();
    assert_eq!(rows(&got), 1);
    let mut listing = c
        .prepare(
            "SELECT name FROM lakegate.products ORDER BY name".into(),
            None,
        )
        .await
        .unwrap();

    // An edited product does not run under a statement prepared before the edit.
    let mut counting = c
        .prepare(
            "SELECT people FROM diagnosis_count('Diabetes')".into(),
            None,
        )
        .await
        .unwrap();
    let file = dir.path().join("products").join("diagnosis_count.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("How many", "How many (edited)")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        let r = match counting.execute().await {
            Err(e) => Err(e.to_string()),
            Ok(info) => fetch(&mut c, info).await,
        };
        match r {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the edit did not apply"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        e.contains("changed since the statement was prepared"),
        "{e}"
    );
    let fresh = query(&mut c, "SELECT people FROM diagnosis_count('Diabetes')")
        .await
        .unwrap();
    assert_eq!(column_strings(&fresh, 0), ["15"]);

    // The admin takes employee_check out of the scenario.
    edit_scenario_products(dir.path(), |products| {
        products.retain(|p| p["__entity"]["id"] != "employee_check")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = seen(&mut c, "SELECT * FROM employee_check(3)").await;
        if r.starts_with("ERROR") {
            break;
        }
        assert!(Instant::now() < deadline, "the change did not apply: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = match stmt.execute().await {
        Err(e) => e.to_string(),
        Ok(info) => fetch(&mut c, info).await.unwrap_err(),
    };
    assert!(e.contains("employee_check"), "{e}");
    let e = fetch(&mut c, ticket).await.unwrap_err();
    assert!(e.contains("employee_check"), "{e}");
    // A listing prepared before lists what may be called when it runs.
    let listed = fetch(&mut c, listing.execute().await.unwrap())
        .await
        .unwrap();
    assert_eq!(column_strings(&listed, 0), ["all_ids", "diagnosis_count"]);
}

#[tokio::test]
async fn bad_product_files_are_refused_at_load_with_file_and_reason() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "ghost_column",
            "description = \"x\"\nsql = \"SELECT nope FROM hr.employees WHERE id = $id\"\n[params]\nid = \"int\"\n",
            "does not plan under its own grants",
        ),
        (
            "undeclared",
            "description = \"x\"\nsql = \"SELECT id FROM hr.employees WHERE id = $id\"\n",
            "which [params] does not declare",
        ),
        (
            "unused",
            "description = \"x\"\nsql = \"SELECT id FROM hr.employees\"\n[params]\nid = \"int\"\n",
            "does not use as $id",
        ),
        (
            "writes",
            "description = \"x\"\nsql = \"DELETE FROM hr.employees\"\n",
            "does not plan under its own grants",
        ),
        (
            "abs",
            "description = \"x\"\nsql = \"SELECT 1 AS one\"\n",
            "built-in function",
        ),
    ];
    for (name, text, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = attack::build_with_products(dir.path()).await;
        std::fs::write(
            dir.path().join("products").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
        // The scenario approves it, so it is planned at load.
        edit_scenario_products(dir.path(), |products| {
            products.push(serde_json::json!({"__entity": {"type": "Lake::Product", "id": name}}))
        });
        let config = lake_config::Config::load(&config).unwrap();
        let err = gateway::Gateway::open(&config)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{name}.toml")) && err.contains(why),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn the_operator_lists_products_with_their_approving_scenarios() {
    let (dir, config) = lake().await;
    std::fs::write(
        dir.path().join("products").join("draft.toml"),
        "description = \"not approved yet\"\nsql = \"SELECT 1 AS one\"\n",
    )
    .unwrap();
    let mut config = lake_config::Config::load(&config).unwrap();
    config.audit.dir = dir.path().join("scratch-audit");
    let gateway = gateway::Gateway::open(&config).await.unwrap();
    let listed = gateway.product_summaries();
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "all_ids",
            "diagnosis_count",
            "draft",
            "employee_check",
            "employee_check_batch",
            "leaky_batch",
            "salary_band"
        ]
    );
    let check = &listed[3];
    assert_eq!(check.parameters, "id int");
    assert_eq!(check.output, "id Int64, hypertensive Boolean");
    assert_eq!(check.max_rows, 1);
    assert_eq!(check.version.len(), 64);
    assert_eq!(check.scenarios, [SCENARIO, "verification"]);
    assert_eq!(listed[4].parameters, "id list<int>");
    assert_eq!(listed[6].scenarios, ["payroll"]);
    assert!(listed[2].scenarios.is_empty());
}

#[tokio::test]
async fn an_operator_calls_a_product_from_the_command_line_path_on_the_record() {
    let (dir, config) = lake().await;
    let config = lake_config::Config::load(&config).unwrap();
    let gateway = Arc::new(gateway::Gateway::open(&config).await.unwrap());
    let who = gateway::Principal {
        user: "alice".into(),
        scenario: Some(SCENARIO.into()),
    };
    let got = gateway
        .call_product(&who, "employee_check", vec!["1".into()])
        .await
        .unwrap();
    assert_eq!(column_strings(&got, 1), ["true"]);
    let e = gateway
        .call_product(&who, "salary_band", vec!["1".into()])
        .await
        .unwrap_err()
        .client_text();
    assert!(e.contains("salary_band") && e.contains("not found"), "{e}");
    let e = gateway
        .call_product(&who, "employee_check", vec!["one".into()])
        .await
        .unwrap_err()
        .client_text();
    assert!(e.contains("parameter"), "{e}");
    drop(gateway);
    let records = audit_records(&dir.path().join("audit"));
    let kinds: Vec<String> = records.iter().map(|r| r.kind.to_string()).collect();
    assert!(
        kinds
            .windows(3)
            .any(|w| w == ["decision", "call", "completion"]),
        "{kinds:?}"
    );
    let call = records.iter().find(|r| r.kind == "call").unwrap();
    assert_eq!(call.client, None);
    assert_eq!(call.rows_out, Some(1));
}

/// A list of ids as one parameter value (a batch call's argument).
fn id_list(ids: impl IntoIterator<Item = Option<i64>>) -> RecordBatch {
    let list =
        arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>([Some(
            ids.into_iter().collect::<Vec<_>>(),
        )]);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "0",
            arrow::array::Array::data_type(&list).clone(),
            true,
        )])),
        vec![Arc::new(list)],
    )
    .unwrap()
}

#[tokio::test]
async fn a_batch_call_answers_about_each_value_sent_and_nothing_else() {
    let (dir, config) = lake().await;
    edit_scenario_named(dir.path(), "verification", |attrs| {
        attrs["max_calls_per_day"] = 10_010.into();
    });
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, "verification").await;

    // 10,000 ids in one prepared call, as ADBC binds a list: one row per id, with its id.
    // Ids 1-20 are Hypertension, 21-72 other diagnoses (48-72 South), the rest no one.
    let mut stmt = c
        .prepare("SELECT * FROM employee_check_batch(?)".into(), None)
        .await
        .unwrap();
    let fields = stmt.parameter_schema().unwrap().fields().clone();
    assert!(
        matches!(fields[0].data_type(), DataType::List(f) if *f.data_type() == DataType::Int64),
        "{fields:?}"
    );
    stmt.set_parameters(id_list((1..=10_000).map(Some)))
        .unwrap();
    let got = fetch(&mut c, stmt.execute().await.unwrap()).await.unwrap();
    assert_eq!(rows(&got), 10_000);
    let ids = column_strings(&got, 0);
    let answers = column_strings(&got, 1);
    let by_id: std::collections::HashMap<i64, String> = ids
        .iter()
        .zip(answers)
        .map(|(i, a)| (i.parse().unwrap(), a))
        .collect();
    assert_eq!(by_id.len(), 10_000);
    for (id, expected) in [(1, "true"), (20, "true"), (21, "false"), (50, "false")] {
        assert_eq!(by_id[&id], expected, "id {id}");
    }
    assert_eq!(by_id[&73], "NULL", "no employee 73: no answer");

    // Literal lists; a bad list is refused naming the product and the parameter.
    let two = query(&mut c, "SELECT * FROM employee_check_batch([1, 50])")
        .await
        .unwrap();
    assert_eq!(column_strings(&two, 1), ["true", "false"]);
    for (args, says) in [
        ("['1']", "argument 1 (id) must be a list<int>"),
        ("1", "argument 1 (id) must be a list<int>"),
        ("[1, 2.5]", "argument 1 (id) must be a literal"),
        ("[]", "holds 0 values"),
        ("[1, NULL]", "NULL values"),
    ] {
        // Refused when the statement is planned: nothing is prepared, nothing runs.
        let e = seen(
            &mut c,
            &format!("SELECT * FROM employee_check_batch({args})"),
        )
        .await;
        assert!(
            e.starts_with("ERROR") && e.contains("employee_check_batch") && e.contains(says),
            "{args}: {e}"
        );
    }
    stmt.set_parameters(id_list([Some(1), None])).unwrap();
    let e = fetch(&mut c, stmt.execute().await.unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("NULL values"), "{e}");
    let too_many = id_list((1..=20_001).map(Some));
    stmt.set_parameters(too_many).unwrap();
    let e = fetch(&mut c, stmt.execute().await.unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 to 20000 ([review] max_batch)"), "{e}");

    // A batch product that answers about ids it was not sent releases nothing.
    let leaked = seen(&mut c, "SELECT * FROM leaky_batch([1, 2])").await;
    assert!(
        leaked.contains("ERROR") && leaked.contains("did not ask about"),
        "{leaked}"
    );
    assert!(!leaked.contains("Employee 3"), "{leaked}");
    let asked = query(&mut c, "SELECT id FROM leaky_batch([3, 2, 1])")
        .await
        .unwrap();
    assert_eq!(rows(&asked), 3);

    // Counted per value: 10,000 + 2 + 2 + 3 made; 3 more pass the quota of 10,010 and are
    // refused before they run, naming it; 1 more is still within it.
    let e = seen(&mut c, "SELECT * FROM employee_check_batch([1, 2, 3, 4])").await;
    assert!(e.contains("max_calls_per_day = 10010"), "{e}");
    query(&mut c, "SELECT * FROM employee_check_batch([7, 8, 9])")
        .await
        .unwrap();
    let e = seen(&mut c, "SELECT * FROM employee_check(1)").await;
    assert!(e.contains("max_calls_per_day = 10010"), "{e}");
    drop(c);
    drop(server);

    // The trail counts what was billed; usage bills per value.
    let records = audit_records(&dir.path().join("audit"));
    let billed: u64 = records
        .iter()
        .filter(|r| r.kind == gateway::audit::RecordKind::Call)
        .map(|r| r.calls.unwrap_or(1))
        .sum();
    assert_eq!(billed, 10_000 + 2 + 2 + 3 + 3);
    let big = records
        .iter()
        .find(|r| r.kind == gateway::audit::RecordKind::Call && r.calls == Some(10_000))
        .expect("the batch's call record");
    assert!(big.sql.starts_with("employee_check_batch@"), "{}", big.sql);
    assert!(big.sql.contains("9999, 10000]"), "{}", &big.sql[..200]);
    assert_eq!(big.rows_out, Some(10_000));
}

#[tokio::test]
async fn a_revocation_that_breaks_a_product_takes_effect_and_the_product_stops() {
    // Round 24: the reload planned every product under the new policies and refused the whole
    // set when one no longer planned, so a revocation that also took a product's table kept
    // the revoked access serving. Now the policies apply and that product is left out.
    let (dir, config) = lake().await;
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    query(&mut c, "SELECT count(*) FROM org.departments")
        .await
        .unwrap();
    query(&mut c, "SELECT * FROM employee_check(1)")
        .await
        .unwrap();
    // An edit that does not plan keeps the product's last good version serving (seen once
    // a valid edit beside it is served).
    let products = dir.path().join("products");
    let broken = std::fs::read_to_string(products.join("employee_check.toml")).unwrap();
    std::fs::write(
        products.join("employee_check.toml"),
        broken.replace("diagnosis =", "no_such_column ="),
    )
    .unwrap();
    edit_beside_and_keep(&mut c, &products).await;
    let file = dir.path().join("policies").join("policies.cedar");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!(
            "{text}\n@id(\"revoked\")\nforbid (principal, action == Lake::Action::\"query\", \
             resource == Lake::Table::\"hr.employees\");\n"
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // A query planned just before the change is stopped by it ("the policies changed while
    // the query ran"); the next ones do not find the table.
    let e = loop {
        match query(&mut c, "SELECT count(*) FROM hr.employees").await {
            Err(e) if e.contains("not found") => break e,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("the revocation did not take effect: {other:?}"),
        }
    };
    assert!(e.contains("not found"), "{e}");
    // Every product here reads hr.employees: none can be called, as if unknown. The policies
    // serve before the products are planned again under them: meanwhile a call is refused
    // (it fails planning under the new set, withheld), never answered.
    let e = loop {
        match query(&mut c, "SELECT * FROM employee_check(1)").await {
            Err(e) if e.contains("not found") => break e,
            // Refused some other way while the products are planned again.
            Err(e) if Instant::now() < deadline => {
                assert!(!e.contains(CANARY), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("a product reading a revoked table: {other:?}"),
        }
    };
    assert!(e.contains("not found"), "{e}");
    let listed = query(&mut c, "SELECT name FROM lakegate.products")
        .await
        .unwrap();
    assert_eq!(rows(&listed), 0);
    // What the revocation did not touch still serves.
    query(&mut c, "SELECT count(*) FROM org.departments")
        .await
        .unwrap();

    // Restarted so, the server starts (the products left out), and still enforces it;
    // `lakegate product check`'s strict opening names the product that does not plan.
    drop(c);
    drop(server);
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    let e = seen(&mut c, "SELECT * FROM employee_check(1)").await;
    assert!(e.contains("not found"), "{e}");
    query(&mut c, "SELECT count(*) FROM org.departments")
        .await
        .unwrap();
    let err = strict_open_error(dir.path(), &config).await;
    assert!(err.contains("does not plan under its own grants"), "{err}");
}

#[tokio::test]
async fn a_product_file_that_does_not_parse_neither_stops_the_server_nor_the_others() {
    let (dir, config) = lake().await;
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    query(&mut c, "SELECT * FROM employee_check(1)")
        .await
        .unwrap();
    // A TOML syntax error in one file, a valid edit in another: the edit is served, and the
    // broken product keeps its last good version.
    let products = dir.path().join("products");
    std::fs::write(
        products.join("employee_check.toml"),
        "sql = \"\"\"SELECT 1\n",
    )
    .unwrap();
    edit_beside_and_keep(&mut c, &products).await;

    // Restarted so, the server starts without it and serves the others; the strict opening
    // of `lakegate product check` names the file.
    drop(c);
    drop(server);
    let server = TestServer::start(&config).await;
    let mut c = alice(&server, SCENARIO).await;
    let e = seen(&mut c, "SELECT * FROM employee_check(1)").await;
    assert!(e.contains("not found"), "{e}");
    let listed = query(&mut c, "SELECT name, description FROM lakegate.products")
        .await
        .unwrap();
    assert!(
        lakegate_tests::pretty(&listed).contains("Edited"),
        "{}",
        lakegate_tests::pretty(&listed)
    );
    let err = strict_open_error(dir.path(), &config).await;
    assert!(err.contains("employee_check.toml"), "{err}");

    // The folder taken away withdraws every product, as deleting each file would (round 25
    // L1: the last loaded kept serving); put back, they serve again.
    let retired = dir.path().join("products.retired");
    std::fs::rename(&products, &retired).unwrap();
    async fn products_listed(c: &mut Client) -> usize {
        rows(
            &query(c, "SELECT name FROM lakegate.products")
                .await
                .unwrap(),
        )
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while products_listed(&mut c).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the products outlived their folder"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = seen(&mut c, "SELECT * FROM diagnosis_count('x')").await;
    assert!(e.contains("not found"), "{e}");
    std::fs::rename(&retired, &products).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while products_listed(&mut c).await == 0 {
        assert!(Instant::now() < deadline, "the products did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A valid edit of `diagnosis_count` beside a broken `employee_check`: waits until the edit is
/// served, then checks that `employee_check` still answers with its last good version.
async fn edit_beside_and_keep(c: &mut Client, products: &std::path::Path) {
    let counting = std::fs::read_to_string(products.join("diagnosis_count.toml")).unwrap();
    std::fs::write(
        products.join("diagnosis_count.toml"),
        counting.replace("How many", "Edited: how many"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lakegate_tests::pretty(
        &query(c, "SELECT description FROM lakegate.products")
            .await
            .unwrap(),
    )
    .contains("Edited")
    {
        assert!(Instant::now() < deadline, "the valid edit was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = query(c, "SELECT * FROM employee_check(1)").await.unwrap();
    assert_eq!(column_strings(&kept, 1), ["true"]);
}

/// The error of opening the lake strictly (as `lakegate product check` does), beside the
/// server's audit folder.
async fn strict_open_error(dir: &std::path::Path, config: &std::path::Path) -> String {
    let mut strict = lake_config::Config::load(config).unwrap();
    strict.audit.dir = dir.join("scratch-audit");
    gateway::Gateway::open(&strict)
        .await
        .unwrap_err()
        .to_string()
}
