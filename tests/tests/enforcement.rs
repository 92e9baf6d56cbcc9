//! Enforcement over Flight SQL, judged by what a client can learn: the demo's policies mask
//! identity numbers, hide names and confine the district officer to their district. Every byte a
//! client receives (batches, schemas, errors) is searched for raw values it must not see.

use std::collections::HashSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use arrow_flight::sql::CommandGetTables;
use arrow_flight::IpcMessage;

use lakegate_tests::{
    as_user, column_strings, fetch, pretty, query, raw_query, rows, seen, shared_demo, TestServer,
};

/// Every distinct string value of `column` in the raw table.
async fn raw_values(sql: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for b in raw_query(sql).await {
        let c = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        out.extend(c.as_string::<i32>().iter().flatten().map(String::from));
    }
    out
}

fn assert_no_canary(what: &str, text: &str, canaries: &HashSet<String>) {
    for c in canaries {
        assert!(!text.contains(c.as_str()), "{what} leaked `{c}`:\n{text}");
    }
}

#[tokio::test]
async fn masked_identity_numbers_never_leave_raw() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let raw_ids = raw_values("SELECT DISTINCT legal_rep_id FROM market.enterprises").await;
    assert!(raw_ids.len() > 50);

    let batches = query(&mut c, "SELECT legal_rep_id FROM market.enterprises")
        .await
        .unwrap();
    assert_eq!(rows(&batches), 200);
    for v in column_strings(&batches, 0) {
        assert_eq!(v.len(), 64, "{v}");
        assert!(v.chars().all(|c| c.is_ascii_hexdigit()), "{v}");
    }
    // Probing the masked column only ever meets masked values.
    let probe = raw_ids.iter().next().unwrap().clone();
    for sql in [
        format!("SELECT count(*) FROM market.enterprises WHERE legal_rep_id = '{probe}'"),
        format!(
            "SELECT count(*) FROM market.enterprises WHERE legal_rep_id LIKE '{}%'",
            &probe[..6]
        ),
        // Raw numbers are 18 characters and may end in X; the hashes are 64 lowercase hex digits.
        "SELECT count(*) FROM market.enterprises WHERE legal_rep_id LIKE '%X'".into(),
        "SELECT count(*) FROM market.enterprises WHERE length(legal_rep_id) = 18".into(),
        // Joining against candidate values, or comparing with a plain digest of a guess.
        format!(
            "SELECT count(*) FROM market.enterprises e JOIN (VALUES ('{probe}')) AS g(x) ON e.legal_rep_id = g.x"
        ),
        format!(
            "SELECT count(*) FROM market.enterprises WHERE legal_rep_id = encode(sha256('{probe}'), 'hex')"
        ),
    ] {
        let got = query(&mut c, &sql).await.unwrap();
        assert_eq!(column_strings(&got, 0), ["0"], "{sql}");
    }
    for sql in [
        "SELECT legal_rep_id FROM market.enterprises ORDER BY legal_rep_id LIMIT 1",
        "SELECT max(legal_rep_id), min(legal_rep_id) FROM market.enterprises",
        "SELECT string_agg(legal_rep_id, ',') FROM market.enterprises",
        "SELECT * FROM market.enterprises",
        "SELECT e.* FROM market.enterprises e JOIN market.penalties p ON e.credit_code = p.credit_code",
        "SELECT CAST(legal_rep_id AS BIGINT) FROM market.enterprises",
        "EXPLAIN SELECT * FROM market.enterprises WHERE legal_rep_id = 'x'",
    ] {
        assert_no_canary(sql, &seen(&mut c, sql).await, &raw_ids);
    }
}

#[tokio::test]
async fn hidden_columns_do_not_exist() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    // person_name is hidden from the banker: the error is exactly the one DataFusion gives for a
    // table whose columns are the served ones, where person_name does not exist.
    let sql = "SELECT person_name FROM social_security.contributions";
    let hidden = query(&mut c, sql).await.unwrap_err();
    let info = c
        .execute("SELECT * FROM social_security.contributions".into(), None)
        .await
        .unwrap();
    let served = std::sync::Arc::new(Schema::try_from(info).unwrap());
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_default_catalog_and_schema("lake", "public"),
    );
    ctx.catalog("lake")
        .unwrap()
        .register_schema(
            "social_security",
            std::sync::Arc::new(datafusion::catalog::MemorySchemaProvider::new()),
        )
        .unwrap();
    let table = datafusion::datasource::MemTable::try_new(served, vec![vec![]]).unwrap();
    ctx.register_table("social_security.contributions", std::sync::Arc::new(table))
        .unwrap();
    let unknown = ctx.sql(sql).await.unwrap_err().strip_backtrace();
    let hidden_message = hidden.split("message: ").nth(1).unwrap_or_default();
    assert_eq!(hidden_message, format!("{unknown:?}"), "{hidden}");
    let all = query(
        &mut c,
        "SELECT * FROM social_security.contributions LIMIT 1",
    )
    .await
    .unwrap();
    let names: Vec<String> = all[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "record_id",
            "person_id",
            "district",
            "employer_code",
            "month",
            "base_salary",
            "status"
        ]
    );
    let raw_names =
        raw_values("SELECT DISTINCT person_name FROM social_security.contributions").await;
    assert_no_canary("SELECT *", &pretty(&all), &raw_names);

    // A misspelt table gets a suggestion among the tables the banker may see; a table of
    // another scenario gets exactly the error of a table that does not exist.
    let misspelt = query(&mut c, "SELECT * FROM market.penaltys")
        .await
        .unwrap_err();
    assert!(
        misspelt.contains("did you mean market.penalties?"),
        "{misspelt}"
    );
    let denied = query(&mut c, "SELECT * FROM health.visits")
        .await
        .unwrap_err();
    let absent = query(&mut c, "SELECT * FROM health.nothing")
        .await
        .unwrap_err();
    assert!(!denied.contains("did you mean"), "{denied}");
    assert_eq!(
        denied.replace("health.visits", "T"),
        absent.replace("health.nothing", "T")
    );

    // Metadata shows the table as served: no hidden column, the hash typed as text.
    let info = c
        .get_tables(CommandGetTables {
            db_schema_filter_pattern: Some("social_security".into()),
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let tables = fetch(&mut c, info).await.unwrap();
    let bytes = tables[0]
        .column_by_name("table_schema")
        .unwrap()
        .as_binary::<i32>()
        .value(0)
        .to_vec();
    let listed = Schema::try_from(IpcMessage(bytes.into())).unwrap();
    assert!(listed.field_with_name("person_name").is_err());
    assert_eq!(
        listed.field_with_name("person_id").unwrap().data_type(),
        &DataType::Utf8
    );
}

#[tokio::test]
async fn the_district_officer_sees_only_their_district() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "officer", "district-services").await;

    let districts = query(&mut c, "SELECT DISTINCT district FROM health.visits")
        .await
        .unwrap();
    assert_eq!(column_strings(&districts, 0), ["Haidian"]);

    // count and max reflect the visible rows only, never file statistics.
    for (served, raw) in [
        (
            "SELECT count(*), max(visit_id), min(visit_id) FROM health.visits",
            "SELECT count(*), max(visit_id), min(visit_id) FROM health.visits WHERE district = 'Haidian'",
        ),
        (
            "SELECT count(*) FROM social_security.contributions",
            "SELECT count(*) FROM social_security.contributions WHERE district = 'Haidian'",
        ),
    ] {
        let got = query(&mut c, served).await.unwrap();
        let want = raw_query(raw).await;
        assert_eq!(
            column_strings(&got, 0),
            column_strings(&want, 0),
            "{served}"
        );
    }

    // Canaries: values that exist only in other districts' rows.
    let hidden_ids = raw_values(
        "SELECT DISTINCT patient_name FROM health.visits WHERE district <> 'Haidian' \
         EXCEPT SELECT DISTINCT patient_name FROM health.visits WHERE district = 'Haidian'",
    )
    .await;
    assert!(!hidden_ids.is_empty());
    for sql in [
        "SELECT * FROM health.visits",
        "SELECT * FROM health.visits WHERE district = 'Chaoyang' OR 1 = 1",
        "SELECT * FROM health.visits WHERE district <> 'Haidian'",
        "WITH v AS (SELECT * FROM health.visits) SELECT * FROM v WHERE district = 'Chaoyang'",
        "SELECT patient_name FROM health.visits UNION ALL SELECT patient_name FROM health.visits",
        "SELECT (SELECT max(patient_name) FROM health.visits WHERE district = 'Chaoyang')",
        "SELECT v.patient_name FROM health.visits v JOIN social_security.contributions c ON v.district = c.district",
        "SELECT * FROM lake.health.visits",
        "SELECT * FROM \"health\".\"visits\"",
        // Error oracles: an expression that fails on a hidden row must not fail.
        "SELECT 1 / (CASE WHEN district = 'Chaoyang' THEN 0 ELSE 1 END) FROM health.visits",
        "SELECT CAST(CASE WHEN district = 'Chaoyang' THEN patient_name ELSE '1' END AS INT) FROM health.visits",
        "SELECT count(*) FILTER (WHERE district = 'Chaoyang') FROM health.visits",
        "SELECT COALESCE(max(CASE WHEN district = 'Chaoyang' THEN patient_name END), 'none') FROM health.visits",
    ] {
        let text = seen(&mut c, sql).await;
        assert_no_canary(sql, &text, &hidden_ids);
        // No cell is another district's name (the hospital "Chaoyang Hospital" may show).
        let cells = text.lines().flat_map(|l| l.split('|').map(str::trim));
        assert!(!cells.clone().any(|c| c == "Chaoyang"), "{sql}: {text}");
        assert!(!text.contains("Divide by zero"), "{sql}: {text}");
    }
    let zero = query(
        &mut c,
        "SELECT count(*) FROM health.visits WHERE district = 'Chaoyang'",
    )
    .await
    .unwrap();
    assert_eq!(column_strings(&zero, 0), ["0"]);
}

#[tokio::test]
async fn de_identified_values_for_the_insurer() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "insurer", "insurance-underwriting").await;
    let got = query(
        &mut c,
        "SELECT visit_date, cost, patient_id FROM health.visits LIMIT 50",
    )
    .await
    .unwrap();
    for d in column_strings(&got, 0) {
        assert!(d.ends_with("-01-01"), "{d}");
    }
    for cost in column_strings(&got, 1) {
        assert!(cost.ends_with("00.00"), "{cost}");
    }
    // The insurer and the banker hash with the same deployment key: the same person is linkable
    // across scenarios only through the keyed hash, never through the raw number.
    let raw_patients = raw_values("SELECT DISTINCT patient_id FROM health.visits").await;
    assert_no_canary("insurer visits", &pretty(&got), &raw_patients);
    let err = query(&mut c, "SELECT patient_name FROM health.visits")
        .await
        .unwrap_err();
    assert!(err.contains("patient_name"), "{err}");
}

#[tokio::test]
async fn explain_shows_the_barrier_but_no_key() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let text = seen(&mut c, "EXPLAIN SELECT * FROM market.enterprises").await;
    assert!(text.contains("SecureScanExec"), "{text}");
    assert!(text.contains("legal_rep_id=hash"), "{text}");
    let config = std::fs::read_to_string(shared_demo().join("lakegate.toml")).unwrap();
    let key = config
        .lines()
        .find_map(|l| l.strip_prefix("mask_key = \""))
        .unwrap()
        .trim_end_matches('"');
    assert!(!text.contains(key), "{text}");
}

/// Rows of `(key..., n)` as strings, for set comparisons.
fn row_strings(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<Vec<String>> = (0..b.num_columns())
            .map(|i| column_strings(std::slice::from_ref(b), i))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| c[r].clone())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn aggregate_only_groups_cover_k_subjects() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "insurer", "insurance-underwriting").await;

    // Released groups are exactly those with at least 10 distinct patients.
    for (served, raw) in [
        (
            "SELECT diagnosis, count(*) FROM health.visits GROUP BY diagnosis",
            "SELECT diagnosis, count(*) FROM health.visits GROUP BY diagnosis \
             HAVING count(DISTINCT patient_id) >= 10",
        ),
        (
            "SELECT hospital, diagnosis, count(*) FROM health.visits WHERE district = 'Haidian' \
             GROUP BY hospital, diagnosis",
            "SELECT hospital, diagnosis, count(*) FROM health.visits WHERE district = 'Haidian' \
             GROUP BY hospital, diagnosis HAVING count(DISTINCT patient_id) >= 10",
        ),
        (
            "SELECT v.diagnosis, count(*) FROM health.visits v GROUP BY v.diagnosis",
            "SELECT diagnosis, count(*) FROM health.visits GROUP BY diagnosis \
             HAVING count(DISTINCT patient_id) >= 10",
        ),
        (
            // Rows chosen through another table's rows (a semi join: inner joins, which repeat
            // rows, are refused below a release) are counted by their own subjects.
            "SELECT a.diagnosis, count(*) FROM health.visits a WHERE a.visit_id < 100 \
             AND a.district IN (SELECT b.district FROM health.visits b WHERE b.visit_id < 4) \
             GROUP BY a.diagnosis",
            "SELECT a.diagnosis, count(*) FROM health.visits a WHERE a.visit_id < 100 \
             AND a.district IN (SELECT b.district FROM health.visits b WHERE b.visit_id < 4) \
             GROUP BY a.diagnosis HAVING count(DISTINCT a.patient_id) >= 10",
        ),
        (
            "SELECT diagnosis, count(diagnosis), count(*) FROM health.visits \
             WHERE visit_id < 300 GROUP BY diagnosis",
            "SELECT diagnosis, count(diagnosis), count(*) FROM health.visits \
             WHERE visit_id < 300 GROUP BY diagnosis HAVING count(DISTINCT patient_id) >= 10",
        ),
    ] {
        let got = row_strings(&query(&mut c, served).await.unwrap());
        let want = row_strings(&raw_query(raw).await);
        assert_eq!(got, want, "{served}");
        let small = raw_query(&raw.replace(">= 10", "< 10")).await;
        if rows(&small) > 0 {
            // Some groups were suppressed: none of them shows.
            for s in row_strings(&small) {
                assert!(!got.contains(&s), "{served}: small group {s} released");
            }
        }
    }
    // At least one of the queries above suppresses something, or the test proves little.
    let small = raw_query(
        "SELECT hospital, diagnosis FROM health.visits WHERE district = 'Haidian' \
         GROUP BY hospital, diagnosis HAVING count(DISTINCT patient_id) < 10",
    )
    .await;
    assert!(rows(&small) > 0);

    // One group below k: NULL, not a count that tells 0 from 1..9.
    let got = query(
        &mut c,
        "SELECT count(diagnosis), count(*) FROM health.visits WHERE visit_id < 5",
    )
    .await
    .unwrap();
    assert_eq!(row_strings(&got), ["NULL|NULL"]);
    let got = query(&mut c, "SELECT count(diagnosis) FROM health.visits")
        .await
        .unwrap();
    assert_eq!(row_strings(&got), ["1000"]);
    // Released keys may be ordered.
    query(
        &mut c,
        "SELECT diagnosis, count(*) AS n FROM health.visits GROUP BY diagnosis ORDER BY diagnosis",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn aggregate_only_evasions_are_refused_with_the_rule() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "insurer", "insurance-underwriting").await;
    let diagnoses = raw_values("SELECT DISTINCT diagnosis FROM health.visits").await;
    for (sql, rule) in [
        ("SELECT diagnosis FROM health.visits", "may not reach the output"),
        ("SELECT DISTINCT diagnosis FROM health.visits", "DISTINCT"),
        ("SELECT count(*) FROM health.visits WHERE diagnosis = 'C34 Lung cancer'", "WHERE"),
        ("SELECT count(*) FROM health.visits GROUP BY diagnosis HAVING min(diagnosis) > 'A'", "min()"),
        ("SELECT min(diagnosis), max(diagnosis) FROM health.visits", "min()"),
        ("SELECT string_agg(diagnosis, ',') FROM health.visits", "string_agg()"),
        ("SELECT count(*) OVER (PARTITION BY diagnosis) FROM health.visits", "window"),
        ("SELECT diagnosis, count(*) FROM health.visits GROUP BY ROLLUP(diagnosis)", "ROLLUP"),
        ("SELECT upper(diagnosis), count(*) FROM health.visits GROUP BY upper(diagnosis)", "GROUP BY key"),
        ("SELECT sum(length(diagnosis)) FROM health.visits", "bare column"),
        ("SELECT count(*) FROM health.visits ORDER BY max(diagnosis)", "max()"),
        ("SELECT visit_id FROM health.visits ORDER BY diagnosis LIMIT 1", "ORDER BY"),
        ("SELECT diagnosis FROM health.visits UNION SELECT 'x'", "set operation"),
        ("SELECT (SELECT max(diagnosis) FROM health.visits)", "max()"),
        (
            "SELECT count(*) FROM health.visits v WHERE EXISTS (SELECT 1 FROM health.visits w WHERE w.diagnosis = 'C34 Lung cancer' AND w.visit_id = v.visit_id)",
            "WHERE",
        ),
        (
            "SELECT count(*) FROM health.visits a JOIN health.visits b ON a.diagnosis = b.diagnosis",
            "JOIN",
        ),
        (
            "SELECT count(*) FILTER (WHERE diagnosis = 'x') FROM health.visits",
            "FILTER",
        ),
        (
            "SELECT diagnosis, count(*) FILTER (WHERE hospital = 'Haidian Hospital') FROM health.visits GROUP BY diagnosis",
            "FILTER",
        ),
        (
            "WITH d AS (SELECT diagnosis FROM health.visits) SELECT diagnosis, count(*) FROM d GROUP BY diagnosis",
            "directly over",
        ),
        (
            "SELECT CASE WHEN diagnosis = 'C34 Lung cancer' THEN 1 ELSE 0 END FROM health.visits",
            "expression",
        ),
        ("EXPLAIN SELECT diagnosis FROM health.visits", "may not reach the output"),
    ] {
        let err = query(&mut c, sql).await.unwrap_err();
        assert!(
            err.contains("aggregate-only") && err.contains(rule) && err.contains("does not have permission"),
            "{sql}: {err}"
        );
        assert_no_canary(sql, &err, &diagnoses);
    }
}
