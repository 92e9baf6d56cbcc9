//! Queries under a memory pool: the gateway (mode b) with `[execution] memory_limit_bytes`, so
//! that sorts, joins and aggregations spill. Reports which queries complete, their time and the
//! process's peak RSS while each ran.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::queries::Query;
use crate::tpch;

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Runs `queries` through the gateway under a pool of `limit` bytes (joins planned as sort-merge
/// joins if `sort_merge_joins`) and prints a Markdown table.
pub async fn run(
    dir: &Path,
    limit: u64,
    sort_merge_joins: bool,
    queries: &[Query],
) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(dir)?;
    let manifest = tpch::Manifest::read(&dir)?;
    tpch::write_setup(&dir)?;
    let mut config = tpch::config(&dir, Some(limit))?;
    config.audit.dir = dir.join("audit-memory");
    config.execution.sort_merge_joins = sort_merge_joins;
    let gateway = Arc::new(gateway::Gateway::open(&config).await?);
    let mode_b = crate::modes::InProcess::new(gateway, tpch::PERMISSIVE);
    let resettable = reset_peak_rss();
    println!(
        "TPC-H SF {} through the gateway (permissive), memory pool {:.1} GiB, {} joins, \
         spilling to {}; peak RSS {}; mimalloc purge delay {} ms\n",
        manifest.scale_factor,
        limit as f64 / (1u64 << 30) as f64,
        if sort_merge_joins {
            "sort-merge"
        } else {
            "hash"
        },
        dir.join("spill").display(),
        if resettable {
            "per query (VmHWM reset before each)"
        } else {
            "cumulative (VmHWM could not be reset)"
        },
        flight_server::allocator::purge_delay_ms()
    );
    println!(
        "| query | completed | seconds | rows | peak RSS MiB | error |\n|---|---|---|---|---|---|"
    );
    let mut completed = 0;
    for q in queries {
        reset_peak_rss();
        let started = Instant::now();
        let result = mode_b
            .run(&q.sql)
            .await
            .map(|batches| batches.iter().map(|b| b.num_rows()).sum::<usize>());
        let secs = started.elapsed().as_secs_f64();
        let peak = peak_rss().unwrap_or(0) as f64 / (1u64 << 20) as f64;
        match result {
            Ok(rows) => {
                completed += 1;
                println!("| {} | yes | {secs:.1} | {rows} | {peak:.0} | |", q.name);
            }
            Err(e) => {
                let e = format!("{e:#}").replace('|', "/").replace('\n', " ");
                let e: String = e.chars().take(160).collect();
                println!("| {} | **no** | {secs:.1} | | {peak:.0} | {e} |", q.name);
            }
        }
    }
    println!("\n{completed} of {} queries completed.", queries.len());
    Ok(())
}
