//! The secure scan's plan. It crosses the wire (as it will to Ballista executors): encoded with
//! its codec, decoded in a "remote" context that re-plans the Delta scan, it returns exactly what
//! it returns locally — rows filtered and columns masked — and the encoding holds no mask key. It
//! splits its files like a bare scan, reads Parquet as `[execution]` says, and lets a join's
//! dynamic filter prune only a table served exactly as stored.

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
        // A sampled permit: the sample travels as a percentage and is keyed where it runs.
        (
            "developer",
            "product-sandbox",
            "SELECT district, gender, birth_date FROM civil.residents ORDER BY 1, 2, 3",
        ),
    ] {
        let who = Principal {
            user: user.into(),
            scenario: Some(scenario.into()),
        };
        let query = gateway.prepare_audited(&who, sql, None).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let local = pretty(&collect(plan.clone(), query.task_context()).await.unwrap());
        assert!(!local.is_empty());

        let sender = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
        let bytes = physical_plan_to_bytes_with_extension_codec(plan, &sender).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(["SecureScan", "health", "market", "civil"]
            .iter()
            .any(|t| text.contains(t)));
        assert!(!text.contains(key), "the mask key travelled with the plan");

        // The executor brings its own key and storage options.
        let executor = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
        let ctx = query.task_context();
        let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx, &executor).unwrap();
        let remote = pretty(&collect(decoded, ctx.clone()).await.unwrap());
        assert_eq!(remote, local, "{sql}");
        if user == "developer" {
            // Another secret draws another sample: the executor's own key decides.
            let other = SecureScanCodec::new(Some(b"another-key"), Default::default());
            let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx, &other).unwrap();
            let elsewhere = pretty(&collect(decoded, ctx).await.unwrap());
            assert_ne!(elsewhere, local, "{sql}");
        }
    }
}

/// A plan as the indented text EXPLAIN shows.
fn shown(plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> String {
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string()
}

/// The demo's gateway with `[execution]` changed by `set`, an audit folder of its own (one
/// gateway per folder) returned with it to live as long.
async fn demo_gateway_with(
    set: impl FnOnce(&mut lake_config::ExecutionConfig),
) -> (Gateway, tempfile::TempDir) {
    let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    let audit = tempfile::tempdir().unwrap();
    config.audit.dir = audit.path().to_path_buf();
    set(&mut config.execution);
    (Gateway::open(&config).await.unwrap(), audit)
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
        .prepare_audited(&who, "SELECT * FROM health.visits", None)
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
        let (gateway, _audit) = demo_gateway_with(|e| {
            e.memory_limit_bytes = Some(256 << 20);
            e.sort_merge_joins = sort_merge;
        })
        .await;
        let query = gateway.prepare_audited(&who, sql, None).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let shown = shown(&plan);
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

/// `[execution] parquet_pushdown` decides whether the Delta scan of a table served exactly as
/// stored evaluates the user's filters inside the Parquet reader (late materialization) or only
/// prunes with them (the default); DataFusion's filter stays above the scan either way. The
/// setting travels with an encoded plan, so an executor scans as the gateway was told to, and the
/// answers do not change.
#[tokio::test]
async fn parquet_pushdown_follows_the_configuration_and_travels_with_the_plan() {
    let sql = "SELECT penalty_id, district, amount FROM market.penalties \
               WHERE amount > 5000 ORDER BY penalty_id";
    let who = Principal {
        user: "banker".into(),
        scenario: Some("bank-credit".into()),
    };
    let mut answers: Vec<String> = Vec::new();
    for pushdown in [false, true] {
        let (gateway, _audit) = demo_gateway_with(|e| e.parquet_pushdown = pushdown).await;
        let query = gateway.prepare_audited(&who, sql, None).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let shown = shown(&plan);
        assert!(
            shown.contains("FilterExec") && shown.contains("pushed=[amount >"),
            "{shown}"
        );
        assert_eq!(
            shown.contains("into the Parquet reader"),
            pushdown,
            "{pushdown}\n{shown}"
        );
        let local = pretty(&collect(plan.clone(), query.task_context()).await.unwrap());

        let codec = SecureScanCodec::new(None, Default::default());
        let bytes = physical_plan_to_bytes_with_extension_codec(plan, &codec).unwrap();
        let ctx = query.task_context();
        let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx, &codec).unwrap();
        assert_eq!(self::shown(&decoded), shown);
        assert_eq!(pretty(&collect(decoded, ctx).await.unwrap()), local);

        // What the setting does to the Delta scan itself: rows dropped inside the reader.
        let path = shared_demo().join("lake").join("market").join("penalties");
        let table = deltalake::open_table(url::Url::from_directory_path(path).unwrap())
            .await
            .unwrap();
        let raw = datafusion::prelude::SessionContext::new();
        raw.register_table("p", catalog::delta_scan(&table, pushdown).await.unwrap())
            .unwrap();
        let plan = raw
            .sql("SELECT penalty_id FROM p WHERE amount > 5000")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let rows: usize = collect(plan.clone(), raw.task_ctx())
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(
            rows,
            local.lines().filter(|l| l.starts_with("| ")).count() - 1
        );
        let pruned = metric_sum(&plan, "pushdown_rows_pruned");
        assert_eq!(
            pruned > 0,
            pushdown,
            "{pushdown}: {pruned} rows dropped in the reader"
        );
        answers.push(local);
    }
    let rows = answers[0].lines().filter(|l| l.starts_with("| ")).count();
    assert!(rows > 2, "{}", answers[0]);
    assert_eq!(answers[0], answers[1]);
}

/// The sum of the metric `name` over every node of `plan`.
fn metric_sum(
    plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    name: &str,
) -> usize {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name(name))
        .map_or(0, |v| v.as_usize());
    own + plan
        .children()
        .into_iter()
        .map(|c| metric_sum(c, name))
        .sum::<usize>()
}

/// Appends to a demo table a file of its rows again with `changes` (`column = expression`
/// pairs) applied, e.g. keys moved past every existing one so that the new file's statistics
/// are disjoint from the old file's. Returns how many rows were appended.
async fn append_changed(lake: &std::path::Path, table: &str, changes: &[(&str, &str)]) -> usize {
    let (schema, name) = table.split_once('.').unwrap();
    let url = url::Url::from_directory_path(lake.join(schema).join(name)).unwrap();
    let delta = deltalake::open_table(url).await.unwrap();
    // Strings as Utf8, the type the table stores.
    let config = datafusion::prelude::SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    ctx.register_table("t", delta.table_provider().await.unwrap())
        .unwrap();
    let replaced: Vec<String> = changes
        .iter()
        .map(|(column, expr)| format!("{expr} AS {column}"))
        .collect();
    let sql = format!("SELECT * REPLACE ({}) FROM t", replaced.join(", "));
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let n = batches.iter().map(|b| b.num_rows()).sum();
    delta
        .write(batches)
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .unwrap();
    n
}

/// Rows each secure scan of `plan` read from its raw scan, by table.
fn rows_scanned(
    plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    out: &mut std::collections::BTreeMap<String, usize>,
) {
    if plan.name() == "SecureScanExec" {
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .one_line()
            .to_string();
        let table = shown
            .split("table=")
            .nth(1)
            .and_then(|t| t.split([',', ' ', '\n']).next())
            .unwrap()
            .to_string();
        *out.entry(table).or_default() += metric_sum(plan, "rows_scanned");
    }
    for c in plan.children() {
        rows_scanned(c, out);
    }
}

/// A hash join's dynamic filter (the build side's key bounds) reaches the probe side's raw scan
/// when that table is served exactly as stored, so its files outside the bounds are never read;
/// a table served with a mask, a row filter or an aggregate-only column takes no filter made
/// from values of the query, and is read whole. The answers are the same either way.
#[tokio::test]
async fn dynamic_filters_prune_only_tables_served_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = lakegate_tests::private_demo(dir.path()).await;
    let lake = config.lake.root.to_file_path().unwrap();
    // New files whose credit codes sort after every real one, in rows no build side below keeps.
    let penalties = append_changed(
        &lake,
        "market.penalties",
        &[
            ("penalty_id", "penalty_id + 1000000"),
            ("credit_code", "concat('ZZZ', credit_code)"),
            ("reason", "'Appended'"),
        ],
    )
    .await;
    let enterprises = append_changed(
        &lake,
        "market.enterprises",
        &[
            ("credit_code", "concat('ZZZ', credit_code)"),
            ("district", "'Nowhere'"),
        ],
    )
    .await;
    let gateway = Gateway::open(&config).await.unwrap();
    let banker = Principal {
        user: "banker".into(),
        scenario: Some("bank-credit".into()),
    };
    let total = |table: &'static str| {
        let lake = lake.clone();
        async move {
            let n =
                lakegate_tests::raw_query_in(&lake, &format!("SELECT count(*) FROM {table}")).await;
            lakegate_tests::first_i64(&n) as usize
        }
    };
    let (all_penalties, all_enterprises) = (
        total("market.penalties").await,
        total("market.enterprises").await,
    );
    assert!(penalties > 0 && all_penalties > penalties);
    assert!(enterprises > 0 && all_enterprises > enterprises);
    // The build side is the filtered penalties (their statistics are known and small), which
    // keep none of the appended rows; its own filter skips the appended penalties' file.
    for (sql, probe, expected) in [
        // Probe: penalties again, every column raw and every row for the banker, so the join's
        // dynamic filter skips the appended file: the two sides read the old rows only.
        (
            "SELECT count(*) AS n FROM market.penalties a \
             JOIN market.penalties b ON a.credit_code = b.credit_code WHERE b.reason = 'Price fraud'",
            "market.penalties",
            2 * (all_penalties - penalties),
        ),
        // Probe: enterprises, whose legal representatives' ids are masked: no filter made from
        // the query's values goes into its raw scan, and it reads every row.
        (
            "SELECT count(*) AS n FROM market.penalties p \
             JOIN market.enterprises e ON p.credit_code = e.credit_code WHERE p.reason = 'Price fraud'",
            "market.enterprises",
            all_enterprises,
        ),
    ] {
        let query = gateway.prepare_audited(&banker, sql, None).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let shown = shown(&plan);
        assert!(shown.contains("mode=CollectLeft"), "{shown}");
        let batches = collect(plan.clone(), query.task_context()).await.unwrap();
        assert!(lakegate_tests::first_i64(&batches) > 0, "{sql}");
        let mut scanned = std::collections::BTreeMap::new();
        rows_scanned(&plan, &mut scanned);
        assert_eq!(scanned[probe], expected, "{probe}: {scanned:?}\n{shown}");
    }
}
