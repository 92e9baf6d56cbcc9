//! What the harness tests share: the Python for modes (e) and (f), and one untimed run of every
//! mode over a bench dir with its checks.

use std::path::{Path, PathBuf};

use lakegate_benches::harness::{self, Report, RunOptions};
use lakegate_benches::modes::Mode;
use lakegate_benches::queries;

/// The venv's Python, if there is one; CI (`LAKEGATE_REQUIRE_S3` set by the test script)
/// installs it first, so there a missing Python fails.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("LAKEGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("LAKEGATE_REQUIRE_S3").is_none(),
        "no Python for modes e and f at {}: run scripts/test.sh",
        p.display()
    );
    eprintln!("no Python venv: modes e and f skipped (scripts/test.sh sets one up)");
    None
}

/// All 22 queries once in every mode (e and f only with a Python): no problem, every query
/// answered by every mode, and answers that are not all empty (the comparison compares
/// something).
#[allow(dead_code)] // each test binary compiles this module; not every one runs the modes
pub async fn every_mode_agrees(dir: &Path) -> Report {
    every_mode_agrees_with(dir, false).await
}

/// [`every_mode_agrees`], with every table held in memory in the gateway modes when
/// `accelerate`.
#[allow(dead_code)]
pub async fn every_mode_agrees_with(dir: &Path, accelerate: bool) -> Report {
    let python = python();
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| python.is_some() || !matches!(m, Mode::Adbc | Mode::DuckDb))
        .collect();
    let report = harness::run(&RunOptions {
        dir: dir.to_path_buf(),
        modes: modes.clone(),
        queries: queries::all(),
        warmup: 0,
        runs: 1,
        python,
        accelerate,
    })
    .await
    .unwrap();
    let problems = report.problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(report.results.len(), 22);
    for (q, per_mode) in &report.results {
        for m in &modes {
            assert!(
                per_mode.contains_key(&m.letter()),
                "{q} has no ({}) result",
                m.letter()
            );
        }
    }
    assert!(
        report.rows.values().filter(|n| **n > 0).count() >= 20,
        "{:?}",
        report.rows
    );
    report
}
