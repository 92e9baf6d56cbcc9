//! `lakegate-bench`: generate TPC-H as Delta, run the modes, stream a large result, run under a
//! memory pool. See `benches/README.md`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use lakegate_benches::harness::{self, RunOptions};
use lakegate_benches::modes::Mode;
use lakegate_benches::{products, queries, tpch, wire};

/// The `lakegate` binary's allocator: see [`flight_server::allocator`].
#[global_allocator]
static ALLOC: flight_server::allocator::MiMalloc = flight_server::allocator::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lakegate-bench",
    about = "lakegate benchmarks over TPC-H in Delta"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes TPC-H at a scale factor as Delta tables, with the lakegate set-up to serve them.
    Gen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        sf: f64,
        /// Also write `wire.rows` with this many rows (the wire benchmark's result; local lake
        /// only).
        #[arg(long)]
        wire_rows: Option<usize>,
        /// Write the tables to this S3 prefix (`s3://bucket/prefix`) instead of `<dir>/lake`;
        /// credentials from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. DuckDB then reads
        /// local copies of the same Parquet files (`<dir>/parquet/`).
        #[arg(long)]
        s3: Option<String>,
        /// The S3-compatible endpoint, e.g. `http://127.0.0.1:3900` (default: AWS).
        #[arg(long, requires = "s3")]
        s3_endpoint: Option<String>,
        /// The S3 region (default `us-east-1`).
        #[arg(long, requires = "s3")]
        s3_region: Option<String>,
        /// Allow a plain-HTTP endpoint (a server on loopback).
        #[arg(long, requires = "s3")]
        s3_allow_http: bool,
    },
    /// Runs the queries in the modes and prints medians and ratios; every answer is checked.
    Run {
        #[arg(long)]
        dir: PathBuf,
        /// Mode letters: a raw DataFusion, b gateway permissive, c gateway realistic,
        /// d Flight SQL (Rust), e ADBC (Python), f DuckDB (Python), g DuckDB (Python) with the
        /// tables loaded into its memory (not run by default).
        #[arg(long, default_value = "abcdef")]
        modes: String,
        /// Query numbers, e.g. `1,6,14` (default: all 22).
        #[arg(long)]
        queries: Option<String>,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The Python for modes e, f and g (default: `.venv/bin/python` when it exists).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Write the report as JSON here too.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Hold every table in memory (`[acceleration]`) in the gateway modes b–e.
        #[arg(long)]
        accelerate: bool,
    },
    /// Streams `wire.rows` by raw DoGet, lakegate Flight SQL and ADBC; prints MB/s.
    Wire {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        python: Option<PathBuf>,
        /// Also stream it over TLS (`[server.tls]`, certificates generated into the dir).
        #[arg(long)]
        tls: bool,
    },
    /// Data product calls: a verification lookup on a register of `rows` people by one and by
    /// several ADBC clients, a batch call, and DuckDB on the same Parquet; p50/p99 and rates.
    Products {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// Timed calls (single client; shared among the clients in the concurrent run).
        #[arg(long, default_value_t = 1_000)]
        calls: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// People per batch call.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        #[arg(long)]
        python: Option<PathBuf>,
        /// Hold the register in memory (`[acceleration]`, key index).
        #[arg(long)]
        accelerate: bool,
    },
    /// Runs each query through the gateway (mode b) under a memory pool with spilling; reports
    /// which complete, the time and the peak RSS.
    Memory {
        #[arg(long)]
        dir: PathBuf,
        /// The pool, in bytes (default 4 GiB).
        #[arg(long, default_value_t = 4 << 30)]
        limit: u64,
        #[arg(long)]
        queries: Option<String>,
        /// Plan joins as sort-merge joins (`[execution] sort_merge_joins`), which spill.
        #[arg(long)]
        sort_merge_joins: bool,
    },
}

fn default_python() -> Option<PathBuf> {
    let venv = PathBuf::from(".venv/bin/python");
    venv.exists().then_some(venv)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Gen {
            dir,
            sf,
            wire_rows,
            s3,
            s3_endpoint,
            s3_region,
            s3_allow_http,
        } => {
            if s3.is_some() && wire_rows.is_some() {
                bail!(
                    "--wire-rows writes to the local lake: generate it in a bench dir without --s3"
                );
            }
            let lake = tpch::LakeSpec {
                s3_root: s3,
                endpoint: s3_endpoint,
                region: s3_region,
                allow_http: s3_allow_http,
            };
            let target = lake
                .s3_root
                .clone()
                .unwrap_or_else(|| dir.join("lake").display().to_string());
            eprintln!("generating TPC-H SF {sf} into {target}");
            let m = tpch::generate_in(&dir, sf, &lake).await?;
            if let Some(rows) = wire_rows {
                eprintln!("writing wire.rows ({rows} rows)");
                wire::generate(&std::fs::canonicalize(&dir)?, rows).await?;
            }
            eprintln!(
                "done: {} lineitem rows; config {}",
                m.rows.get("lineitem").copied().unwrap_or(0),
                dir.join("lakegate.toml").display()
            );
        }
        Command::Run {
            dir,
            modes,
            queries: list,
            warmup,
            runs,
            python,
            json,
            accelerate,
        } => {
            let mut selected = Vec::new();
            for c in modes.chars() {
                match Mode::from_letter(c) {
                    Some(m) => selected.push(m),
                    None => bail!("unknown mode `{c}`: use letters a to g"),
                }
            }
            selected.sort();
            selected.dedup();
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            let opts = RunOptions {
                dir,
                modes: selected.clone(),
                queries: match list {
                    Some(l) => queries::select(&l)?,
                    None => queries::all(),
                },
                warmup,
                runs,
                python: python.or_else(default_python),
                accelerate,
            };
            let report = harness::run(&opts).await?;
            println!("{}", report.markdown(&selected));
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            let problems = report.problems();
            if !problems.is_empty() {
                bail!(
                    "{} problem(s): a mode failed or gave a wrong answer",
                    problems.len()
                );
            }
        }
        Command::Wire {
            dir,
            runs,
            python,
            tls,
        } => {
            let python = python.or_else(default_python);
            let r = wire::run(&dir, runs, python.as_deref(), tls).await?;
            println!(
                "{} rows, {:.1} MB of Arrow data\n\n| path | median s | MB/s | vs raw DoGet |\n|---|---|---|---|",
                r.rows,
                r.bytes as f64 / 1e6
            );
            let base = r.figures.first().map(|f| f.mb_per_s).unwrap_or(f64::NAN);
            for f in &r.figures {
                println!(
                    "| {} | {:.2} | {:.0} | {:.0}% |",
                    f.path,
                    f.median_s,
                    f.mb_per_s,
                    100.0 * f.mb_per_s / base
                );
            }
        }
        Command::Products {
            dir,
            rows,
            calls,
            clients,
            batch,
            python,
            accelerate,
        } => {
            let Some(python) = python.or_else(default_python) else {
                bail!(
                    "the product benchmark needs Python with the ADBC driver and DuckDB: --python"
                );
            };
            eprintln!(
                "writing {} ({rows} rows) unless it is there",
                products::TABLE
            );
            products::generate(&dir, rows).await?;
            let r = products::run(&dir, rows, &python, calls, clients, batch, accelerate).await?;
            println!(
                "{} rows in {}\n\n| what | calls | p50 ms | p99 ms | per second |\n|---|---|---|---|---|",
                r.rows,
                products::TABLE
            );
            for f in &r.figures {
                println!(
                    "| {} | {} | {:.2} | {:.2} | {:.0} |",
                    f.what, f.calls, f.p50_ms, f.p99_ms, f.per_s
                );
            }
        }
        Command::Memory {
            dir,
            limit,
            queries: list,
            sort_merge_joins,
        } => {
            let qs = match list {
                Some(l) => queries::select(&l)?,
                None => queries::all(),
            };
            lakegate_benches::memory::run(&dir, limit, sort_merge_joins, &qs).await?;
        }
    }
    Ok(())
}
