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

#[tokio::test]
async fn golden_files_per_scenario() {
    let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    // A fixed key, so that hashed values are the same in every run.
    config.policy.mask_key = Some("golden-files-mask-key".into());
    let gateway = Gateway::open(&config).await.unwrap();
    let update = std::env::var("LAKEGATE_UPDATE_GOLDEN").as_deref() == Ok("1");
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
        let actual = render(&gateway, &expected).await;
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
