//! The `lakegate` binary as an operator runs it.

use std::io::Write;
use std::process::{Command, Stdio};

fn lakegate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(args)
        .env("LAKEGATE_LOG", "warn")
        .output()
        .expect("lakegate runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_build_then_policy_check_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out, err) = lakegate(&["demo", "--dir", d, "--rows", "1000", "--build-only"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("wrote market.enterprises (200 rows)"), "{out}");
    let config = dir.path().join("lakegate.toml");
    assert!(config.exists());

    // A second run reuses the lake.
    let (ok, out, _) = lakegate(&["demo", "--dir", d, "--build-only"]);
    assert!(ok && out.contains("reusing the demo lake"), "{out}");
    // One built by an older lakegate (no edition in its marker) is rebuilt, not reused
    // without the tables, users and products this one's README shows.
    std::fs::write(dir.path().join(".demo-complete"), "rows = 1000\n").unwrap();
    let (ok, out, _) = lakegate(&["demo", "--dir", d, "--rows", "1000", "--build-only"]);
    assert!(
        ok && out.contains("built by an older lakegate: rebuilding"),
        "{out}"
    );
    assert!(out.contains("wrote gas.meter_readings (500 rows)"), "{out}");
    let (ok, out, _) = lakegate(&["demo", "--dir", d, "--build-only"]);
    assert!(ok && out.contains("reusing the demo lake"), "{out}");

    let c = config.to_str().unwrap();
    let (ok, out, err) = lakegate(&["policy", "check", "--config", c]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("ok: 35 policies validate"), "{out}");
    assert!(!out.contains("warning"), "{out}");

    // A misspelt column validates, and is warned about with its file and line.
    let policies = dir.path().join("policies").join("policies.cedar");
    let good = std::fs::read_to_string(&policies).unwrap();
    let typo = format!(
        "{good}\n@id(\"typo\")\npermit (principal, action == Lake::Action::\"read_column\", resource == Lake::Column::\"health.visits.diagnosys\");\n"
    );
    std::fs::write(&policies, &typo).unwrap();
    let (ok, out, err) = lakegate(&["policy", "check", "--config", c]);
    let line = typo
        .lines()
        .position(|l| l.contains("@id(\"typo\")"))
        .unwrap()
        + 1;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("warning: {}:{line}:", policies.display()))
            && out.contains("health.visits.diagnosys\", which is no column"),
        "{out}"
    );
    std::fs::write(&policies, &good).unwrap();

    let (ok, out, err) = lakegate(&["policy", "schema", "--config", c]);
    assert!(ok, "{err}");
    assert!(out.contains("namespace Lake::Rows::market {"), "{out}");
    assert!(out.contains("entity enterprises = {"), "{out}");
    assert!(out.contains("entity Scenario {"), "{out}");

    // As while a server runs: the audit folder is held. Explaining needs no audit trail.
    let held = gateway::audit::AuditLog::open(&dir.path().join("audit"), 1 << 20).unwrap();
    let (ok, out, err) = lakegate(&[
        "explain",
        "--config",
        c,
        "--user",
        "banker",
        "--scenario",
        "bank-credit",
        "SELECT district, count(*) FROM market.enterprises GROUP BY district",
    ]);
    assert!(ok, "{err}");
    for expected in [
        "table market.enterprises (version 1): allowed (by scenario-scope)",
        "legal_rep_id             masked: hash (by bank-identities-hashed)",
        "rows: all (by rows-operators)",
        "mask('hash', legal_rep_id) AS legal_rep_id",
        "query as planned:\n  SELECT",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    let (ok, out, _) = lakegate(&[
        "explain",
        "--config",
        c,
        "--user",
        "officer",
        "--scenario",
        "district-services",
        "SELECT * FROM health.visits JOIN market.enterprises USING (district)",
    ]);
    assert!(ok);
    assert!(out.contains("rows: where (\"district\" IS NOT NULL AND \"district\" = 'Haidian') (by rows-own-district)"), "{out}");
    assert!(
        out.contains("table market.enterprises (version 1): DENIED"),
        "{out}"
    );
    assert!(out.contains("refused: "), "{out}");
    drop(held);

    let (ok, _, err) = lakegate(&["usage", "--config", c, "--month", "2026-13"]);
    assert!(!ok && err.contains("expected YYYY-MM"), "{err}");
    let (ok, out, err) = lakegate(&["usage", "--config", c, "--month", "2026-12"]);
    assert!(ok, "{err}");
    assert!(out.contains("scanned") && out.contains("cpu ms"), "{out}");

    // Asking for another size of a reused lake says that it is not rebuilt.
    let (ok, out, _) = lakegate(&["demo", "--dir", d, "--rows", "5000", "--build-only"]);
    assert!(
        ok && out.contains("--rows 5000 applies to a new --dir"),
        "{out}"
    );

    // A policy that does not validate is reported with file, line and id, and fails the check.
    let policies = dir.path().join("policies/policies.cedar");
    let mut text = std::fs::read_to_string(&policies).unwrap();
    text.push_str("\n@id(\"typo\")\npermit (principal, action == Lake::Action::\"query\", resource)\nwhen { resource.departmnt == Lake::Department::\"market\" };\n");
    std::fs::write(&policies, &text).unwrap();
    let (ok, out, err) = lakegate(&["policy", "check", "--config", c]);
    assert!(!ok, "{out}");
    let line = text.lines().position(|l| l.contains("departmnt")).unwrap() + 1;
    assert!(
        err.contains(&format!("policies.cedar:{line}:")) && err.contains("policy `typo`"),
        "{err}"
    );
}

#[test]
fn hash_password_makes_an_argon2id_phc_string() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
}

#[test]
fn a_bad_configuration_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lakegate.toml");
    std::fs::write(
        &config,
        "[lake]\nroot = \"ftp://x\"\n[policy]\ndir = \"p\"\n",
    )
    .unwrap();
    let (ok, _, err) = lakegate(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("lakegate.toml") && err.contains("key `lake.root`"),
        "{err}"
    );
}

#[test]
fn audit_verify_checks_the_chain_and_names_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lakegate.toml");
    std::fs::create_dir_all(dir.path().join("p")).unwrap();
    std::fs::write(
        &config,
        "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n[audit]\ndir = \"trail\"\n",
    )
    .unwrap();
    let log = gateway::audit::AuditLog::open(&dir.path().join("trail"), 1 << 20).unwrap();
    for i in 0..3 {
        let r = gateway::audit::AuditRecord::new(
            gateway::audit::RecordKind::Decision,
            gateway::audit::Decision::Allowed,
            &format!("q{i}"),
            "alice",
            "SELECT 1",
        );
        log.append(r).unwrap();
    }
    drop(log);
    let c = config.to_str().unwrap();
    let (ok, out, err) = lakegate(&["audit", "verify", "--config", c]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("ok: 3 records in 1 segments"), "{out}");

    let segment = dir.path().join("trail/segment-000001.jsonl");
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(
        &segment,
        text.replacen("\"user\":\"alice\"", "\"user\":\"bob\"", 2),
    )
    .unwrap();
    let (ok, _, err) = lakegate(&["audit", "verify", "--config", c]);
    assert!(!ok);
    assert!(
        err.contains("segment-000001.jsonl:1 (seq 1)") && err.contains("altered"),
        "{err}"
    );
}

#[test]
fn sigterm_drains_and_says_so() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out, err) = lakegate(&["demo", "--dir", d, "--rows", "1000", "--build-only"]);
    assert!(ok, "{out}{err}");
    let config = dir.path().join("lakegate.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("LAKEGATE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines
        .by_ref()
        .take(50)
        .any(|l| l.is_ok_and(|l| l.contains("lakegate listening on"))));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed().as_secs() < 40,
            "still running after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM: no new calls"), "{log}");
    assert!(
        log.contains("lakegate stopped") && log.contains("drained=true"),
        "{log}"
    );
    // No colours in a log that is not a terminal.
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn an_operator_lists_checks_and_calls_the_demo_products() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out, err) = lakegate(&["demo", "--dir", d, "--rows", "1000", "--build-only"]);
    assert!(ok, "{out}{err}");
    let config = dir.path().join("lakegate.toml");
    let c = config.to_str().unwrap();
    let (ok, out, err) = lakegate(&["product", "list", "--config", c]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("identity_check") && out.contains("identity-verification"),
        "{out}"
    );
    let (ok, out, err) = lakegate(&["product", "check", "--config", c]);
    assert!(ok && out.contains("8 data product(s) plan"), "{out}{err}");
    // Called as the caseworker would, decided, recorded and billed.
    let call = |name: &str, arg: &str| {
        lakegate(&[
            "product",
            "call",
            "--config",
            c,
            "--user",
            "caseworker",
            "--scenario",
            "benefit-eligibility",
            name,
            arg,
        ])
    };
    let (ok, out, err) = call("lapse_check", "110107196506133947");
    assert!(ok, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("110107196506133947") && l.contains("true")),
        "{out}"
    );
    // Another scenario's product is unknown here.
    let (ok, out, err) = call("risk_grade", "110107196506133947");
    assert!(!ok && err.contains("not found"), "{out}{err}");
    let (ok, out, err) = lakegate(&["usage", "--config", c]);
    assert!(ok, "{out}{err}");
    assert!(
        out.lines().any(|l| l.contains("caseworker")
            && l.contains("lapse_check")
            && l.trim_end().ends_with(" 1")),
        "{out}"
    );
}
