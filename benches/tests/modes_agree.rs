//! The harness at a tiny scale (TPC-H SF 0.01), untimed: every mode answers all 22 queries and
//! every answer agrees — b, d, e, f with raw DataFusion, c with the hand-written policy views.

mod common;

use lakegate_benches::answers::{canonical, difference};
use lakegate_benches::modes::{PolicedReference, Raw};
use lakegate_benches::{queries, tpch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_gives_the_same_answers_at_a_tiny_scale() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tpch::generate(dir.path(), 0.01).await.unwrap();
    assert_eq!(manifest.rows["customer"], 1500);
    assert_eq!(manifest.files.len(), 8);

    common::every_mode_agrees(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realistic_policies_change_the_answers_they_should() {
    let dir = tempfile::tempdir().unwrap();
    tpch::generate(dir.path(), 0.01).await.unwrap();
    let raw = Raw::open(dir.path()).await.unwrap();
    let policed = PolicedReference::open(dir.path()).await.unwrap();
    let q = |n: &str| queries::select(n).unwrap().remove(0).sql;
    // Q10 shows names and phones (masked); Q13 counts customers (filtered by nation); Q6 reads
    // only lineitem, which the policies leave alone.
    for (n, changes) in [("10", true), ("13", true), ("6", false)] {
        let a = canonical(&raw.run(&q(n)).await.unwrap()).unwrap();
        let c = canonical(&policed.run(&q(n)).await.unwrap()).unwrap();
        assert_eq!(difference(&a, &c).is_some(), changes, "Q{n}");
    }
    // Mode (c) itself: no raw name or phone leaves, only customers of the allowed nations.
    let gateway = std::sync::Arc::new(
        gateway::Gateway::open(&tpch::config(dir.path(), None).unwrap())
            .await
            .unwrap(),
    );
    let audit_dir = gateway.audit_log().dir().to_path_buf();
    let c = lakegate_benches::modes::InProcess::new(gateway, tpch::REALISTIC);
    let batches = c
        .run("SELECT c_name, c_phone, c_nationkey FROM tpch.customer")
        .await
        .unwrap();
    let rows = canonical(&batches).unwrap();
    assert!(!rows.is_empty());
    // The in-process modes write what the server writes: a decision, then a completion.
    let trail = audit_records(&audit_dir);
    let [.., decision, completion] = trail.as_slice() else {
        panic!("{trail:?}")
    };
    assert_eq!(
        (&decision["kind"], &decision["decision"]),
        (&"decision".into(), &"allowed".into())
    );
    assert_eq!(
        (&completion["kind"], &completion["decision"]),
        (&"completion".into(), &"completed".into())
    );
    assert_eq!(completion["query_id"], decision["query_id"]);
    assert_eq!(completion["rows_out"], rows.len() as u64);
    for row in rows {
        let text = format!("{row:?}");
        assert!(!text.contains("Customer#"), "{text}");
        let lakegate_benches::answers::Cell::Text(phone) = &row[1] else {
            panic!("{text}")
        };
        assert_eq!(phone.len(), 15, "{text}");
        assert!(phone[2..].chars().all(|c| c == '*'), "{text}");
        let lakegate_benches::answers::Cell::Num(nation) = row[2] else {
            panic!("{text}")
        };
        assert!(tpch::REALISTIC_NATIONS.contains(&(nation as i64)), "{text}");
    }
    let refused = c
        .run("SELECT p_retailprice FROM tpch.part")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("aggregate-only"), "{refused}");
    let last = audit_records(&audit_dir).pop().unwrap();
    assert_eq!(
        (&last["kind"], &last["decision"]),
        (&"decision".into(), &"refused".into())
    );
}

/// Every record of the audit trail in `dir`, oldest first.
fn audit_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    gateway::audit::segments(dir)
        .unwrap()
        .iter()
        .flat_map(|(_, path)| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The statistics the secure scan reports for `sql` planned as `scenario`: (rows, whether any
/// column has a known max).
async fn scan_statistics(g: &gateway::Gateway, scenario: &str, sql: &str) -> (String, bool) {
    use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
    let who = gateway::Principal {
        user: tpch::USER.into(),
        scenario: Some(scenario.into()),
    };
    let plan = g
        .prepare(&who, sql)
        .await
        .unwrap()
        .physical_plan()
        .await
        .unwrap();
    let mut scan = plan;
    while scan.name() != "SecureScanExec" {
        let child = scan.children().first().map(|c| (*c).clone());
        scan = child.expect("a secure scan under the plan");
    }
    let stats = StatisticsContext::new()
        .compute(scan.as_ref(), &StatisticsArgs::new())
        .unwrap();
    let max_known = stats
        .column_statistics
        .iter()
        .any(|c| c.max_value.get_value().is_some());
    (format!("{:?}", stats.num_rows), max_known)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secure_scan_reports_statistics_only_for_tables_served_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    tpch::generate(dir.path(), 0.01).await.unwrap();
    let g = gateway::Gateway::open(&tpch::config(dir.path(), None).unwrap())
        .await
        .unwrap();
    // Served as stored: the Delta log's row count reaches the planner.
    let (rows, _) = scan_statistics(
        &g,
        tpch::PERMISSIVE,
        "SELECT c_custkey, c_name FROM tpch.customer",
    )
    .await;
    assert_eq!(rows, "Exact(1500)");
    // Rows filtered and names masked, or an aggregate-only column in the table (part, with no
    // mask or row filter): nothing about the stored values.
    for sql in [
        "SELECT c_custkey, c_name FROM tpch.customer",
        "SELECT p_partkey, p_name FROM tpch.part",
    ] {
        let (rows, max_known) = scan_statistics(&g, tpch::REALISTIC, sql).await;
        assert_eq!(rows, "Absent", "{sql}");
        assert!(!max_known, "{sql}");
    }
}
