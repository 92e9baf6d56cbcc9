//! Golden files, one per demo scenario, readable by a policy admin: user, scenario and SQL, then
//! the decisions and secure views (`lakegate explain`), then the rows that come back on the demo
//! lake. Regenerate after an intended change with
//! `LAKEGATE_UPDATE_GOLDEN=1 cargo test -p lakegate-tests --test golden` and review the diff.

use std::path::PathBuf;

use futures::TryStreamExt;

use gateway::{Gateway, Principal};
use lakegate_tests::{pretty, shared_demo};

const CASE_END: &str = "====";
const PART: &str = "----";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Renders one golden file from its header and queries.
async fn render(gateway: &Gateway, text: &str) -> String {
    let mut user = String::new();
    let mut scenario = String::new();
    let mut header = String::new();
    let mut cases = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(u) = line.strip_prefix("user ") {
            user = u.trim().to_string();
            header.push_str(line);
            header.push('\n');
        } else if let Some(s) = line.strip_prefix("scenario ") {
            scenario = s.trim().to_string();
            header.push_str(line);
            header.push('\n');
        } else if line == "query" {
            let mut sql = String::new();
            while let Some(l) = lines.next_if(|l| *l != PART && *l != CASE_END) {
                sql.push_str(l);
                sql.push('\n');
            }
            // Skip the expected parts: they are rendered anew.
            for l in lines.by_ref() {
                if l == CASE_END {
                    break;
                }
            }
            cases.push(sql.trim().to_string());
        } else if cases.is_empty() {
            header.push_str(line);
            header.push('\n');
        }
    }
    let who = Principal {
        user,
        scenario: Some(scenario),
    };
    let mut out = format!("{}\n", header.trim_end());
    for sql in cases {
        let report = gateway.explain(&who, &sql).await.expect("explain");
        // The first line names the policy-set hash, which changes with any policy edit.
        let report: String = report.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let result = match gateway.prepare_audited(&who, &sql, None).await {
            Ok(q) => match q.execute().await {
                Ok(stream) => match stream.try_collect::<Vec<_>>().await {
                    Ok(batches) => pretty(&batches),
                    Err(e) => format!("error: {e}"),
                },
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("error: {e}"),
        };
        out.push_str(&format!(
            "\nquery\n{sql}\n{PART}{report}{PART}\n{result}\n{CASE_END}\n"
        ));
    }
    out
}

fn golden_config() -> lake_config::Config {
    let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    // A fixed key, so that hashed values are the same in every run.
    config.policy.mask_key = Some("golden-files-mask-key".into());
    config
}

#[tokio::test]
async fn golden_files_per_scenario() {
    let gateway = Gateway::open(&golden_config()).await.unwrap();
    let update = std::env::var("LAKEGATE_UPDATE_GOLDEN").as_deref() == Ok("1");
    check(&gateway, update).await;
}

/// The same decisions and rows with every table of the lake held in memory (`[acceleration]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_files_hold_with_every_table_accelerated() {
    let mut config = golden_config();
    // One writer per audit folder: the other test writes the demo's.
    config.audit.dir = lakegate_tests::scratch_dir("lakegate-golden-accel-");
    let lake = catalog::Lake::open(&config.lake).await.unwrap();
    config.acceleration = Some(lake_config::AccelerationConfig {
        max_bytes: 1 << 30,
        tables: lake.tables().iter().map(|t| t.to_string()).collect(),
        hot: false,
    });
    let gateway = Gateway::open(&config).await.unwrap();
    let status = gateway.lake().load_accelerated().await.unwrap();
    assert!(status.len() >= 10, "{status:?}");
    for s in &status {
        assert!(
            matches!(s.state, catalog::accel::TableState::Held { .. }),
            "{s:?}"
        );
    }
    check(&gateway, false).await;
    let hits: u64 = gateway
        .lake()
        .accelerator()
        .unwrap()
        .status()
        .iter()
        .map(|s| s.hits)
        .sum();
    assert!(hits > 20, "the golden queries read memory ({hits} hits)");
}

async fn check(gateway: &Gateway, update: bool) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "golden"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "one golden file per demo scenario");
    let mut failures = Vec::new();
    for path in files {
        let expected = std::fs::read_to_string(&path).unwrap();
        let actual = render(gateway, &expected).await;
        if update {
            std::fs::write(&path, &actual).unwrap();
        } else if actual != expected {
            failures.push(format!(
                "{} differs; expected:\n{expected}\nactual:\n{actual}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
