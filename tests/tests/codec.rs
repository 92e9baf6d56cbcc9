//! The secure scan crosses the wire (as it will to Ballista executors): encoded with its codec,
//! decoded in a "remote" context that re-plans the Delta scan, it returns exactly what it returns
//! locally — rows filtered and columns masked — and the encoding holds no mask key.

use datafusion::physical_plan::{collect, ExecutionPlanProperties};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};

use gateway::{Gateway, Principal, SecureScanCodec};
use lakegate_tests::{pretty, shared_demo};

#[tokio::test]
async fn the_secure_scan_round_trips_through_its_codec() {
    let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    let key = "codec-test-mask-key";
    config.policy.mask_key = Some(key.into());
    let gateway = Gateway::open(&config).await.unwrap();
    for (user, scenario, sql) in [
        (
            "officer",
            "district-services",
            "SELECT visit_id, upper(patient_id), district FROM health.visits WHERE hospital = 'Haidian Hospital' ORDER BY visit_id",
        ),
        (
            "banker",
            "bank-credit",
            "SELECT district, count(*) AS n FROM market.penalties WHERE amount > 100 GROUP BY district ORDER BY district",
        ),
        (
            "insurer",
            "insurance-underwriting",
            "SELECT diagnosis, count(*) AS n FROM health.visits GROUP BY diagnosis ORDER BY diagnosis",
        ),
    ] {
        let who = Principal {
            user: user.into(),
            scenario: Some(scenario.into()),
        };
        let query = gateway.prepare(&who, sql).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let local = pretty(&collect(plan.clone(), query.task_context()).await.unwrap());
        assert!(!local.is_empty());

        let sender = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
        let bytes = physical_plan_to_bytes_with_extension_codec(plan, &sender).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("SecureScan") || text.contains("health") || text.contains("market"));
        assert!(!text.contains(key), "the mask key travelled with the plan");

        // The executor brings its own key and storage options.
        let executor = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
        let ctx = query.task_context();
        let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx, &executor).unwrap();
        let remote = pretty(&collect(decoded, ctx).await.unwrap());
        assert_eq!(remote, local, "{sql}");
    }
}

/// The first secure scan in `plan`.
fn secure_scan(
    plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Option<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    if plan.name() == "SecureScanExec" {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(secure_scan)
}

/// Rows as sorted text lines: the same rows in any partition order compare equal.
fn row_lines(batches: &[datafusion::arrow::record_batch::RecordBatch]) -> Vec<String> {
    let mut lines: Vec<String> = pretty(batches)
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The optimizer splits a bare Delta scan's files over the target partitions; it cannot reach
/// through the secure scan (a leaf), so the secure scan splits its raw scan itself. Split, it
/// returns the same filtered and masked rows, and so does an executor that decodes it, re-plans
/// the Delta scan and splits it the same way (each partition from its own plan instance, as on
/// Ballista: with DataFusion's file-stream work stealing on, each returned every row).
#[tokio::test]
async fn the_secure_scan_splits_its_files_like_a_bare_scan() {
    let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    let key = "split-test-mask-key";
    config.policy.mask_key = Some(key.into());
    // Its own audit folder: one gateway per folder, and the other test here opens the demo's.
    let audit = tempfile::tempdir().unwrap();
    config.audit.dir = audit.path().to_path_buf();
    let gateway = Gateway::open(&config).await.unwrap();
    let who = Principal {
        user: "officer".into(),
        scenario: Some("district-services".into()),
    };
    let query = gateway
        .prepare(&who, "SELECT * FROM health.visits")
        .await
        .unwrap();
    let plan = query.physical_plan().await.unwrap();
    let scan = secure_scan(&plan).expect("a secure scan");
    let ctx = query.task_context();
    let one = row_lines(&collect(scan.clone(), ctx.clone()).await.unwrap());
    assert!(one.len() > 10, "{}", one.len());

    let mut options = datafusion::config::ConfigOptions::new();
    options.optimizer.repartition_file_min_size = 0;
    let split = scan
        .repartitioned(4, &options)
        .unwrap()
        .expect("the raw scan splits");
    let partitions = split.output_partitioning().partition_count();
    assert!(partitions > scan.output_partitioning().partition_count());
    assert_eq!(
        row_lines(&collect(split.clone(), ctx.clone()).await.unwrap()),
        one
    );

    let codec = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
    let bytes = physical_plan_to_bytes_with_extension_codec(split, &codec).unwrap();
    // Like an executor: each partition from a freshly decoded plan.
    let mut lines = Vec::new();
    for p in 0..partitions {
        let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx, &codec).unwrap();
        assert_eq!(decoded.output_partitioning().partition_count(), partitions);
        let stream = decoded.execute(p, ctx.clone()).unwrap();
        let batches: Vec<_> = futures::TryStreamExt::try_collect(stream).await.unwrap();
        lines.extend(row_lines(&batches));
    }
    lines.sort();
    assert_eq!(lines, one);
}

/// `[execution] sort_merge_joins` plans sort-merge joins (they spill; hash joins cannot), and the
/// answers do not change.
#[tokio::test]
async fn sort_merge_joins_can_be_chosen_and_answer_the_same() {
    let sql = "SELECT a.visit_id, b.district FROM health.visits a \
               JOIN health.visits b ON a.visit_id = b.visit_id ORDER BY a.visit_id";
    let who = Principal {
        user: "officer".into(),
        scenario: Some("district-services".into()),
    };
    let mut answers = Vec::new();
    for sort_merge in [false, true] {
        let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
        let audit = tempfile::tempdir().unwrap();
        config.audit.dir = audit.path().to_path_buf();
        config.execution.memory_limit_bytes = Some(256 << 20);
        config.execution.sort_merge_joins = sort_merge;
        let gateway = Gateway::open(&config).await.unwrap();
        let query = gateway.prepare(&who, sql).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        // DataFusion plans sort-merge joins only with more than one target partition.
        let parallel = query.task_context().session_config().target_partitions() > 1;
        let (expected, not) = if sort_merge && parallel {
            ("SortMergeJoin", "HashJoinExec")
        } else {
            ("HashJoinExec", "SortMergeJoin")
        };
        assert!(
            shown.contains(expected) && !shown.contains(not),
            "{sort_merge}\n{shown}"
        );
        answers.push(pretty(&collect(plan, query.task_context()).await.unwrap()));
    }
    assert!(answers[0].lines().count() > 10);
    assert_eq!(answers[0], answers[1]);
}
