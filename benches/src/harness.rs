//! One benchmark run: every query in every mode, answers checked against each other, medians
//! and ratios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::answers::{self, Answer};
use crate::modes::{self, Mode};
use crate::queries::Query;
use crate::tpch;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The bench dir (from `gen`).
    pub dir: PathBuf,
    /// The modes to run.
    pub modes: Vec<Mode>,
    /// The queries to run.
    pub queries: Vec<Query>,
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub runs: usize,
    /// The Python with `adbc-driver-flightsql` and `duckdb` (modes e and f).
    pub python: Option<PathBuf>,
    /// `[acceleration]` for every TPC-H table in the gateway modes (b–e), loaded before the
    /// first query.
    pub accelerate: bool,
}

/// One query in one mode.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Measured {
    /// Seconds per timed run.
    pub times: Vec<f64>,
    /// Why it failed, or why its answer is wrong.
    pub problem: Option<String>,
}

impl Measured {
    /// The median of the timed runs.
    pub fn median(&self) -> Option<f64> {
        if self.problem.is_some() || self.times.is_empty() {
            return None;
        }
        let mut t = self.times.clone();
        t.sort_by(|a, b| a.total_cmp(b));
        let n = t.len();
        Some(if n % 2 == 1 {
            t[n / 2]
        } else {
            (t[n / 2 - 1] + t[n / 2]) / 2.0
        })
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// TPC-H scale factor.
    pub scale_factor: f64,
    /// Warm-up runs per query and mode.
    pub warmup: usize,
    /// Timed runs per query and mode.
    pub runs: usize,
    /// Per query, per mode letter.
    pub results: BTreeMap<String, BTreeMap<char, Measured>>,
    /// Rows of each query's answer (from mode a).
    pub rows: BTreeMap<String, usize>,
}

impl Report {
    /// Every problem: failures and wrong answers.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (q, modes) in &self.results {
            for (m, r) in modes {
                if let Some(p) = &r.problem {
                    out.push(format!("{q} ({m}): {p}"));
                }
            }
        }
        out
    }

    /// The median of `mode` for `query`, if it ran and agreed.
    pub fn median(&self, query: &str, mode: Mode) -> Option<f64> {
        self.results.get(query)?.get(&mode.letter())?.median()
    }

    /// `num/den` per query, where both ran.
    pub fn ratios(&self, num: Mode, den: Mode) -> BTreeMap<String, f64> {
        self.results
            .keys()
            .filter_map(|q| Some((q.clone(), self.median(q, num)? / self.median(q, den)?)))
            .collect()
    }

    /// The geometric mean of `num/den` over the queries where both ran, and how many those were.
    pub fn geomean(&self, num: Mode, den: Mode) -> Option<(f64, usize)> {
        let r = self.ratios(num, den);
        if r.is_empty() {
            return None;
        }
        let n = r.len();
        Some((
            (r.values().map(|x| x.ln()).sum::<f64>() / n as f64).exp(),
            n,
        ))
    }

    /// The report as Markdown tables.
    pub fn markdown(&self, modes: &[Mode]) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let ratios: Vec<(Mode, Mode)> = [
            (Mode::Permissive, Mode::Raw),
            (Mode::Realistic, Mode::Raw),
            (Mode::FlightSql, Mode::Raw),
            (Mode::Adbc, Mode::Raw),
            (Mode::FlightSql, Mode::DuckDb),
            (Mode::FlightSql, Mode::DuckDbMemory),
        ]
        .into_iter()
        .filter(|(a, b)| modes.contains(a) && modes.contains(b))
        .collect();
        let _ = writeln!(
            s,
            "TPC-H SF {}, {} warm-up + {} timed runs, median ms per query; ratios of medians.\n",
            self.scale_factor, self.warmup, self.runs
        );
        for m in modes {
            let _ = writeln!(s, "- ({}) {}", m.letter(), m.label());
        }
        let _ = writeln!(s);
        let _ = write!(s, "| query | rows |");
        for m in modes {
            let _ = write!(s, " ({}) ms |", m.letter());
        }
        for (a, b) in &ratios {
            let _ = write!(s, " {}/{} |", a.letter(), b.letter());
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "|{}", "---|".repeat(2 + modes.len() + ratios.len()));
        for q in self.results.keys() {
            let _ = write!(s, "| {q} | {} |", self.rows.get(q).copied().unwrap_or(0));
            for m in modes {
                match self.results[q].get(&m.letter()) {
                    Some(r) if r.problem.is_some() => {
                        let _ = write!(s, " FAILED |");
                    }
                    Some(r) => {
                        let _ = write!(s, " {:.1} |", r.median().unwrap_or(f64::NAN) * 1e3);
                    }
                    None => {
                        let _ = write!(s, " – |");
                    }
                }
            }
            for (a, b) in &ratios {
                match (self.median(q, *a), self.median(q, *b)) {
                    (Some(x), Some(y)) => {
                        let _ = write!(s, " {:.2} |", x / y);
                    }
                    _ => {
                        let _ = write!(s, " – |");
                    }
                }
            }
            let _ = writeln!(s);
        }
        let _ = write!(s, "| **geomean** | |");
        for _ in modes {
            let _ = write!(s, " |");
        }
        for (a, b) in &ratios {
            match self.geomean(*a, *b) {
                Some((g, _)) => {
                    let _ = write!(s, " **{g:.3}** |");
                }
                None => {
                    let _ = write!(s, " – |");
                }
            }
        }
        let _ = writeln!(s);
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(s, "\nEvery mode gave the expected answer to every query.");
        } else {
            let _ = writeln!(s, "\nProblems:\n");
            for p in problems {
                let _ = writeln!(s, "- {p}");
            }
        }
        s
    }
}

async fn measure<F, Fut>(warmup: usize, runs: usize, mut f: F) -> (Measured, Option<Answer>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<arrow::array::RecordBatch>>>,
{
    let mut m = Measured::default();
    let mut answer = None;
    for i in 0..warmup.max(1) + runs {
        match modes::timed(f()).await {
            Ok((batches, secs)) => {
                if i == 0 {
                    match answers::canonical(&batches) {
                        Ok(a) => answer = Some(a),
                        Err(e) => {
                            m.problem = Some(format!("unreadable answer: {e}"));
                            return (m, None);
                        }
                    }
                }
                if i >= warmup.max(1) {
                    m.times.push(secs);
                }
            }
            Err(e) => {
                m.problem = Some(format!("failed: {e:#}"));
                return (m, None);
            }
        }
    }
    (m, answer)
}

fn check(m: &mut Measured, want: Option<&Answer>, got: Option<Answer>) {
    if m.problem.is_some() {
        return;
    }
    match (want, got) {
        (Some(w), Some(g)) => {
            if let Some(d) = answers::difference(w, &g) {
                m.problem = Some(format!("wrong answer: {d}"));
            }
        }
        (None, _) => m.problem = Some("no reference answer to check against".into()),
        (_, None) => m.problem = Some("no answer".into()),
    }
}

/// Runs `opts`. Every mode's answer is checked: (b), (d), (e), (f) against (a); (c) against raw
/// DataFusion over views that apply the realistic policies by hand.
pub async fn run(opts: &RunOptions) -> anyhow::Result<Report> {
    let dir = std::fs::canonicalize(&opts.dir)
        .with_context(|| format!("no bench dir at {}", opts.dir.display()))?;
    let manifest = tpch::Manifest::read(&dir)?;
    tpch::write_setup(&dir)?;
    let mut config = tpch::config(&dir, None)?;
    if opts.accelerate {
        config.acceleration = Some(tpch::acceleration());
    }
    let want = |m: Mode| opts.modes.contains(&m);

    let raw = modes::Raw::open(&dir).await?;
    let reference = if want(Mode::Realistic) {
        Some(modes::PolicedReference::open(&dir).await?)
    } else {
        None
    };
    // One audit folder per writer: the in-process gateway and the server each have their own.
    let mut inproc_config = config.clone();
    inproc_config.audit.dir = dir.join("audit-inprocess");
    let gateway = Arc::new(gateway::Gateway::open(&inproc_config).await?);
    tpch::held(&gateway).await?;
    let permissive = modes::InProcess::new(gateway.clone(), tpch::PERMISSIVE);
    let realistic = modes::InProcess::new(gateway.clone(), tpch::REALISTIC);

    let needs_server = want(Mode::FlightSql) || want(Mode::Adbc);
    let (addr, shutdown) = if needs_server {
        let server = flight_server::Server::bind(&config, Some("127.0.0.1:0".parse()?)).await?;
        tpch::held(server.gateway()).await?;
        let addr = server.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = server
                .run(async {
                    let _ = rx.await;
                })
                .await
            {
                eprintln!("lakegate server failed: {e:#}");
            }
        });
        (Some(addr), Some(tx))
    } else {
        (None, None)
    };
    let remote = match addr {
        Some(a) if want(Mode::FlightSql) => {
            Some(modes::Remote::connect(a, tpch::PERMISSIVE).await?)
        }
        _ => None,
    };

    let mut report = Report {
        scale_factor: manifest.scale_factor,
        warmup: opts.warmup,
        runs: opts.runs,
        results: BTreeMap::new(),
        rows: BTreeMap::new(),
    };
    let mut reference_answers: BTreeMap<String, Answer> = BTreeMap::new();
    let (w, n) = (opts.warmup, opts.runs);
    for q in &opts.queries {
        eprint!("  {} ", q.name);
        let mut results = BTreeMap::new();
        // (a) is also the reference of b, d, e and f: it always runs.
        let (a, answer_a) = measure(w, n, || raw.run(&q.sql)).await;
        if let Some(ans) = &answer_a {
            report.rows.insert(q.name.clone(), ans.len());
            reference_answers.insert(q.name.clone(), ans.clone());
        }
        if want(Mode::Raw) {
            results.insert('a', a);
        }
        eprint!("a");
        if want(Mode::Permissive) {
            let (mut m, got) = measure(w, n, || permissive.run(&q.sql)).await;
            check(&mut m, answer_a.as_ref(), got);
            results.insert('b', m);
            eprint!("b");
        }
        if let Some(reference) = &reference {
            let want_c = match reference
                .run(&q.sql)
                .await
                .and_then(|b| answers::canonical(&b))
            {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("reference of {} failed: {e:#}", q.name);
                    None
                }
            };
            let (mut m, got) = measure(w, n, || realistic.run(&q.sql)).await;
            check(&mut m, want_c.as_ref(), got);
            results.insert('c', m);
            eprint!("c");
        }
        if let Some(remote) = &remote {
            let (mut m, got) = measure(w, n, || remote.run(&q.sql)).await;
            check(&mut m, answer_a.as_ref(), got);
            results.insert('d', m);
            eprint!("d");
        }
        eprintln!();
        report.results.insert(q.name.clone(), results);
    }

    if want(Mode::Adbc) || want(Mode::DuckDb) || want(Mode::DuckDbMemory) {
        let letters: String = [Mode::Adbc, Mode::DuckDb, Mode::DuckDbMemory]
            .into_iter()
            .filter(|m| want(*m))
            .map(|m| m.letter())
            .collect();
        let python = opts.python.clone().context(
            "modes e, f and g need --python (a Python with adbc-driver-flightsql and duckdb)",
        )?;
        eprintln!("  modes {letters} (Python) ...");
        let out = run_python(&python, &letters, addr, &dir, opts).await?;
        for (letter, per_query) in out {
            for (name, r) in per_query {
                let mut m = Measured {
                    times: r.times,
                    problem: r.error.map(|e| format!("failed: {e}")),
                };
                let got = r.answer.map(|mut a| {
                    answers::sort(&mut a);
                    a
                });
                check(&mut m, reference_answers.get(&name), got);
                report.results.entry(name).or_default().insert(letter, m);
            }
        }
    }
    if let Some(tx) = shutdown {
        let _ = tx.send(());
    }
    Ok(report)
}

#[derive(Deserialize)]
struct PyResult {
    #[serde(default)]
    times: Vec<f64>,
    answer: Option<Answer>,
    error: Option<String>,
}

async fn run_python(
    python: &Path,
    letters: &str,
    addr: Option<std::net::SocketAddr>,
    dir: &Path,
    opts: &RunOptions,
) -> anyhow::Result<BTreeMap<char, BTreeMap<String, PyResult>>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/modes.py");
    let qdir = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let files: Vec<String> = opts
        .queries
        .iter()
        .map(|q| qdir.join(format!("{}.sql", q.name)).display().to_string())
        .collect();
    let endpoint = addr
        .map(|a| format!("grpc://{a}"))
        .unwrap_or_else(|| "grpc://127.0.0.1:1".into());
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .args(["--modes", letters, "--endpoint", &endpoint])
        .args(["--user", tpch::USER, "--password", tpch::PASSWORD])
        .args(["--scenario", tpch::PERMISSIVE])
        .arg("--manifest")
        .arg(dir.join("manifest.json"))
        .args(["--queries", &files.join(",")])
        .args(["--warmup", &opts.warmup.to_string()])
        .args(["--runs", &opts.runs.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} {} failed ({}); is the venv set up? (pip install -r benches/python/requirements.txt)",
            python.display(),
            script.display(),
            output.status
        );
    }
    let raw: BTreeMap<String, BTreeMap<String, PyResult>> =
        serde_json::from_slice(&output.stdout).context("modes.py printed no valid JSON")?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| Some((k.chars().next()?, v)))
        .collect())
}
