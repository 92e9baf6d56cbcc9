//! Usage per (user, scenario, day) summed from the trail's completion records.

use super::*;

/// Usage of one user under one scenario on one day, from the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The user.
    pub user: String,
    /// The scenario.
    pub scenario: String,
    /// Executed queries (completion records).
    pub queries: u64,
    /// Requests refused at planning (policy, read-only, unknown table).
    pub refused: u64,
    /// Results ended by output review.
    pub review_refused: u64,
    /// Rows sent.
    pub rows_out: u64,
    /// Bytes of Arrow IPC sent.
    pub bytes_out: u64,
    /// Wall-clock milliseconds of execution.
    pub wall_ms: u64,
    /// Raw rows read by the secure scans.
    pub rows_scanned: u64,
    /// Compute time of the plans' operators, milliseconds.
    pub cpu_ms: u64,
    /// Data product calls that released their output (`call` records), by product: what a
    /// bill per call counts.
    pub product_calls: std::collections::BTreeMap<String, u64>,
}

/// Usage rows by (day, user, scenario).
pub type UsageTotals = std::collections::BTreeMap<(String, String, String), UsageRow>;

/// Usage per (day, user, scenario) from the records in `dir`, optionally for one scenario and
/// one month (`YYYY-MM`). The trail is the meter: what is billed is what is on the chain.
pub fn usage(
    dir: &Path,
    scenario: Option<&str>,
    month: Option<&str>,
) -> Result<Vec<UsageRow>, AuditError> {
    let mut rows = UsageTotals::new();
    for (_, path) in segments(dir)? {
        add_usage(&path, &mut rows, scenario, month)?;
    }
    Ok(rows.into_values().collect())
}

/// Adds the usage of one segment file's records to `rows` (so that usage can be kept up to
/// date segment by segment, without reading the whole trail again).
pub fn add_usage(
    path: &Path,
    rows: &mut UsageTotals,
    scenario: Option<&str>,
    month: Option<&str>,
) -> Result<(), AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_err(path))?;
        let Ok(r) = serde_json::from_str::<AuditRecord>(&line) else {
            continue;
        };
        let Some(s) = r.scenario.clone() else {
            continue;
        };
        if scenario.is_some_and(|x| x != s) || month.is_some_and(|m| !r.time.starts_with(m)) {
            continue;
        }
        let day = r.time.get(..10).unwrap_or_default().to_string();
        let row = rows
            .entry((day.clone(), r.user.clone(), s.clone()))
            .or_insert_with(|| UsageRow {
                day,
                user: r.user.clone(),
                scenario: s,
                ..Default::default()
            });
        match (r.kind, r.decision) {
            (RecordKind::Decision, Decision::Refused) => row.refused += 1,
            (RecordKind::Completion, outcome) => {
                row.queries += 1;
                if outcome == Decision::Refused {
                    row.review_refused += 1;
                }
                row.rows_out += r.rows_out.unwrap_or(0);
                row.bytes_out += r.bytes_out.unwrap_or(0);
                row.wall_ms += r.duration_ms.unwrap_or(0);
                row.rows_scanned += r.rows_scanned.unwrap_or(0);
                row.cpu_ms += r.cpu_ms.unwrap_or(0);
            }
            (RecordKind::Call, _) => {
                for call in &r.products {
                    // `name@version(args)`: billed per product, whatever its version.
                    let name = call.split('@').next().unwrap_or(call);
                    *row.product_calls.entry(name.to_string()).or_default() += r.calls.unwrap_or(1);
                }
            }
            _ => {}
        }
    }
    Ok(())
}
