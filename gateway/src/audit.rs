//! The audit trail: one hash-chained record per decision and per completed query, appended to
//! segment files under the audit folder and fsynced before a result is released.
//!
//! ```text
//! audit/segment-000001.jsonl   {"seq":1,...,"prev_hash":"000…","hash":"9f2…"}
//!                              {"seq":2,...,"prev_hash":"9f2…","hash":"41c…"}
//! audit/segment-000002.jsonl   {"seq":3,...,"prev_hash":"41c…",...}
//! ```
//!
//! `hash = sha256(prev_hash ‖ the record's JSON with an empty hash)`. Editing, deleting,
//! reordering, inserting or truncating records breaks the chain; [`verify`] names the first bad
//! record. A write that fails fails the query (fail closed).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the audit trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An I/O error on the audit folder.
    #[error("audit trail {}: {source}; the query is refused until the audit folder is writable", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The trail does not verify.
    #[error("audit trail broken at {location}: {problem}")]
    Broken {
        /// `segment:line (seq n)`.
        location: String,
        /// What is wrong.
        problem: String,
    },
}

/// The longest refusal or failure reason a record keeps: error texts can be far larger than
/// the statement they are about (see [`crate::error::bounded_text`]).
pub const MAX_REASON_BYTES: usize = 16 << 10;

/// A table read by a query, with its version and what the user saw of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRead {
    /// `schema.table`.
    pub table: String,
    /// The Delta version read.
    pub version: u64,
    /// `column: treatment` for every column served.
    pub columns: Vec<String>,
    /// The row predicate, as text.
    pub rows: String,
}

/// One audit record. Field order is the canonical form the hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// RFC 3339 time of writing.
    pub time: String,
    /// `decision` (before any result leaves) or `completion` (after the stream ends).
    pub kind: String,
    /// Links a completion to its decision.
    pub query_id: String,
    /// The user.
    pub user: String,
    /// The scenario, if any.
    pub scenario: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    /// The SQL as sent.
    pub sql: String,
    /// The query as planned (DataFusion's unparser), when it was planned.
    pub rewritten_sql: Option<String>,
    /// SHA-256 of the policy set decisions were made against.
    pub policy_set: String,
    /// The determining policies.
    pub policy_ids: Vec<String>,
    /// `allowed`, `refused`, `failed`, `completed`, `cancelled`, `recovered`.
    pub decision: String,
    /// Why (the error text of a refusal or failure; the limit that ended a stream).
    pub reason: Option<String>,
    /// Tables and columns read, with their treatment and versions.
    pub tables: Vec<TableRead>,
    /// Rows sent (completion records).
    pub rows_out: Option<u64>,
    /// Bytes of Arrow IPC sent (completion records).
    pub bytes_out: Option<u64>,
    /// Wall-clock milliseconds from execution to the end of the stream.
    pub duration_ms: Option<u64>,
    /// SHA-256 of the Arrow IPC stream as sent (completion records).
    pub result_digest: Option<String>,
    /// Raw rows the secure scans read (completion records).
    pub rows_scanned: Option<u64>,
    /// Compute time of the plan's operators in milliseconds (completion records).
    pub cpu_ms: Option<u64>,
    /// Groups the minimum-group rule withheld (how many, never which; completion records).
    pub suppressed_groups: Option<u64>,
    /// ε spent on differentially private releases (`privacy` records; absent elsewhere, so
    /// older records hash as they did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<String>,
    /// The previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

impl AuditRecord {
    /// A record of `kind` with everything else empty (the log fills seq, time and hashes).
    pub fn new(kind: &str, query_id: &str, user: &str, sql: &str) -> Self {
        Self {
            seq: 0,
            time: String::new(),
            kind: kind.into(),
            query_id: query_id.into(),
            user: user.into(),
            scenario: None,
            client: None,
            sql: sql.into(),
            rewritten_sql: None,
            policy_set: String::new(),
            policy_ids: vec![],
            decision: String::new(),
            reason: None,
            tables: vec![],
            rows_out: None,
            bytes_out: None,
            duration_ms: None,
            result_digest: None,
            rows_scanned: None,
            cpu_ms: None,
            suppressed_groups: None,
            epsilon: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The hash this record must carry, given its `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let json = serde_json::to_vec(&unhashed).expect("records serialize");
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(&json);
        hex::encode(h.finalize())
    }
}

struct Tail {
    seq: u64,
    hash: String,
    segment: u64,
    file: File,
    size: u64,
    /// A segment was closed since the last anchor.
    rotated: bool,
}

/// The end of the chain, as anchored to the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The last record's sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The segment it is in.
    pub segment: u64,
    /// When the anchor was taken (RFC 3339).
    pub time: String,
}

/// The append-only, hash-chained audit log.
pub struct AuditLog {
    dir: PathBuf,
    segment_bytes: u64,
    tail: Mutex<Tail>,
    /// Held for the life of the log: one writer per audit folder, or the chain would fork.
    _lock: File,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("segment-{n:06}.jsonl"))
}

/// The segment files of `dir` in order.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in entries {
        let path = e.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(n) = name
            .strip_prefix("segment-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

impl AuditLog {
    /// Opens the log in `dir`, continuing the chain. A torn last line (a crash in the middle of
    /// an append) is cut off and a `recovered` record says so.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.try_lock().map_err(|_| AuditError::Io {
            path: lock_path.clone(),
            source: std::io::Error::other(
                "the audit folder is in use by another lakegate server; give each server its own [audit] dir",
            ),
        })?;
        let segs = segments(dir)?;
        let (mut seq, mut hash, segment) =
            (0u64, GENESIS.to_string(), segs.last().map_or(1, |s| s.0));
        let mut torn = None;
        if let Some((_, last)) = segs.last() {
            // The chain's end is the last complete record of the last segment; earlier
            // segments are verified by `verify`, not on every start.
            let text = std::fs::read_to_string(last).map_err(io_err(last))?;
            let mut good_len = 0usize;
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<AuditRecord>(line.trim_end()) {
                    Ok(r) => {
                        seq = r.seq;
                        hash = r.hash;
                        good_len += line.len();
                    }
                    Err(_) => break,
                }
            }
            if good_len < text.len() {
                torn = Some(text.len() - good_len);
                let f = OpenOptions::new()
                    .write(true)
                    .open(last)
                    .map_err(io_err(last))?;
                f.set_len(good_len as u64).map_err(io_err(last))?;
                f.sync_all().map_err(io_err(last))?;
            }
            if seq == 0 && segs.len() > 1 {
                // An empty last segment: continue from the one before.
                let prev = &segs[segs.len() - 2].1;
                let text = std::fs::read_to_string(prev).map_err(io_err(prev))?;
                if let Some(r) = text
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
                {
                    seq = r.seq;
                    hash = r.hash;
                }
            }
        }
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let log = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            tail: Mutex::new(Tail {
                seq,
                hash,
                segment,
                file,
                size,
                rotated: false,
            }),
            _lock: lock,
        };
        if let Some(bytes) = torn {
            let mut r = AuditRecord::new("recovery", "", "lakegate", "");
            r.decision = "recovered".into();
            r.reason = Some(format!(
                "a torn record of {bytes} bytes at the end of {} was cut off after a crash",
                segment_path(dir, segment).display()
            ));
            log.append(r)?;
        }
        Ok(log)
    }

    /// The audit folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of the chain, and whether a segment was closed since the last call.
    pub fn head(&self) -> (Anchor, bool) {
        let mut tail = self.tail.lock().expect("audit lock poisoned");
        let rotated = std::mem::take(&mut tail.rotated);
        (
            Anchor {
                seq: tail.seq,
                hash: tail.hash.clone(),
                segment: tail.segment,
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            },
            rotated,
        )
    }

    /// Chains, writes and fsyncs `record`; returns it as written.
    pub fn append(&self, mut record: AuditRecord) -> Result<AuditRecord, AuditError> {
        if let Some(reason) = &record.reason {
            if reason.len() > MAX_REASON_BYTES {
                record.reason =
                    Some(crate::error::bounded_text(reason, MAX_REASON_BYTES).into_owned());
            }
        }
        let mut tail = self.tail.lock().expect("audit lock poisoned");
        if tail.size >= self.segment_bytes {
            let next = tail.segment + 1;
            let path = segment_path(&self.dir, next);
            tail.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            tail.segment = next;
            tail.size = 0;
            tail.rotated = true;
        }
        record.seq = tail.seq + 1;
        record.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        record.prev_hash = tail.hash.clone();
        record.hash = record.compute_hash();
        let mut line = serde_json::to_vec(&record).expect("records serialize");
        line.push(b'\n');
        let path = segment_path(&self.dir, tail.segment);
        tail.file.write_all(&line).map_err(io_err(&path))?;
        tail.file.sync_data().map_err(io_err(&path))?;
        tail.seq = record.seq;
        tail.hash = record.hash.clone();
        tail.size += line.len() as u64;
        Ok(record)
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Segments checked.
    pub segments: usize,
    /// The hash of the last record.
    pub head: String,
}

/// Said with every anchor mismatch: the usual innocent cause is a lake and an audit folder that
/// no longer belong together.
const COPIED_HINT: &str = ". If this audit folder was emptied, replaced or copied apart from its \
    lake, the lake's anchors (_lakegate/audit-anchors/) describe another trail: keep a lake and its \
    audit folder together, or start a fresh copy with `lakegate demo --dir NEW`";

/// Checks the whole chain in `dir`: sequence numbers without gaps, each `prev_hash` the previous
/// record's hash, each hash recomputed. Names the first bad record.
pub fn verify(dir: &Path) -> Result<Verified, AuditError> {
    verify_with_anchors(dir, &[])
}

/// [`verify`], and every anchor must match the record at its sequence number: a trail cut off
/// after an anchor, or rewritten before one, is reported.
pub fn verify_with_anchors(dir: &Path, anchors: &[Anchor]) -> Result<Verified, AuditError> {
    let anchored: std::collections::HashMap<u64, &Anchor> =
        anchors.iter().map(|a| (a.seq, a)).collect();
    let segs = segments(dir)?;
    let mut expected_seq = 1u64;
    let mut prev = GENESIS.to_string();
    for (_, path) in &segs {
        let file = File::open(path).map_err(io_err(path))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io_err(path))?;
            let location = format!("{}:{} (seq {expected_seq})", path.display(), i + 1);
            let broken = |problem: String| AuditError::Broken {
                location: location.clone(),
                problem,
            };
            let r: AuditRecord =
                serde_json::from_str(&line).map_err(|e| broken(format!("not a record: {e}")))?;
            if r.seq != expected_seq {
                return Err(broken(format!(
                    "sequence number {} where {expected_seq} was expected (a record was deleted, inserted or moved)",
                    r.seq
                )));
            }
            if r.prev_hash != prev {
                return Err(broken(
                    "prev_hash is not the previous record's hash (a record was deleted, inserted or moved)".into(),
                ));
            }
            if r.compute_hash() != r.hash {
                return Err(broken(
                    "the record was altered: its hash does not match its content".into(),
                ));
            }
            if let Some(a) = anchored.get(&r.seq) {
                if a.hash != r.hash {
                    return Err(broken(format!(
                        "the record differs from the anchor taken at {} (the trail was rewritten){}",
                        a.time, COPIED_HINT
                    )));
                }
            }
            prev = r.hash;
            expected_seq += 1;
        }
    }
    let last = expected_seq - 1;
    if let Some(a) = anchors
        .iter()
        .filter(|a| a.seq > last)
        .max_by_key(|a| a.seq)
    {
        return Err(AuditError::Broken {
            location: format!("{} (end of the trail, seq {last})", dir.display()),
            problem: format!(
                "an anchor taken at {} names seq {}: records were cut off the end of the trail{}",
                a.time, a.seq, COPIED_HINT
            ),
        });
    }
    Ok(Verified {
        records: expected_seq - 1,
        segments: segs.len(),
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize, segment_bytes: u64) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), segment_bytes).unwrap();
        for i in 0..n {
            let mut r = AuditRecord::new("decision", &format!("q{i}"), "alice", "SELECT 1");
            r.decision = "allowed".into();
            log.append(r).unwrap();
        }
        (dir, log)
    }

    fn lines(dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
        segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text.lines().map(String::from).collect())
            })
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_clean_chain_verifies_across_segments_and_restarts() {
        let (dir, log) = log_with(30, 4096);
        drop(log);
        let log = AuditLog::open(dir.path(), 4096).unwrap();
        log.append(AuditRecord::new("decision", "q", "bob", "SELECT 2"))
            .unwrap();
        let v = verify(dir.path()).unwrap();
        assert_eq!(v.records, 31);
        assert!(v.segments > 1, "{v:?}");
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        type Tamper = fn(&mut Vec<String>);
        let cases: [(&str, Tamper, &str); 5] = [
            (
                "edit",
                |l| l[3] = l[3].replace("alice", "mallory"),
                "altered",
            ),
            (
                "delete",
                |l| {
                    l.remove(3);
                },
                "sequence number",
            ),
            ("reorder", |l| l.swap(3, 4), "sequence number"),
            (
                "insert",
                |l| {
                    let copy = l[2].clone();
                    l.insert(3, copy);
                },
                "sequence number",
            ),
            (
                "truncate-line",
                |l| {
                    let cut = l[3].len() / 2;
                    l[3].truncate(cut);
                },
                "not a record",
            ),
        ];
        for (name, tamper, expected) in cases {
            let (dir, log) = log_with(8, 1 << 20);
            drop(log);
            let mut segs = lines(dir.path());
            let (path, l) = &mut segs[0];
            tamper(l);
            rewrite(path, l);
            let err = verify(dir.path()).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains(":4 (seq 4)"), "{name}: {err}");
        }
        // A consistent rewrite of a record (hash recomputed) still breaks the next link.
        let (dir, log) = log_with(8, 1 << 20);
        drop(log);
        let mut segs = lines(dir.path());
        let (path, l) = &mut segs[0];
        let mut r: AuditRecord = serde_json::from_str(&l[3]).unwrap();
        r.user = "mallory".into();
        r.hash = r.compute_hash();
        l[3] = serde_json::to_string(&r).unwrap();
        rewrite(path, l);
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("(seq 5)") && err.contains("prev_hash"),
            "{err}"
        );
    }

    #[test]
    fn anchors_catch_a_cut_off_end_and_a_consistent_rewrite() {
        let (dir, log) = log_with(6, 1 << 20);
        let (anchor, _) = log.head();
        assert_eq!(anchor.seq, 6);
        drop(log);
        verify_with_anchors(dir.path(), std::slice::from_ref(&anchor)).unwrap();
        // Cut the last two records off: the chain alone still verifies, the anchor does not.
        let (path, mut l) = lines(dir.path()).remove(0);
        l.truncate(4);
        rewrite(&path, &l);
        verify(dir.path()).unwrap();
        let err = verify_with_anchors(dir.path(), std::slice::from_ref(&anchor))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cut off the end"), "{err}");
        assert!(err.contains("copied apart from its lake"), "{err}");
        // Rewrite the whole chain consistently from record 1: the anchor still differs.
        let (dir, log) = log_with(6, 1 << 20);
        let (anchor, _) = log.head();
        drop(log);
        let (path, l) = lines(dir.path()).remove(0);
        let mut prev = GENESIS.to_string();
        let forged: Vec<String> = l
            .iter()
            .map(|line| {
                let mut r: AuditRecord = serde_json::from_str(line).unwrap();
                r.user = "mallory".into();
                r.prev_hash = prev.clone();
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                serde_json::to_string(&r).unwrap()
            })
            .collect();
        rewrite(&path, &forged);
        verify(dir.path()).unwrap();
        let err = verify_with_anchors(dir.path(), &[anchor])
            .unwrap_err()
            .to_string();
        assert!(err.contains("differs from the anchor"), "{err}");
    }

    #[test]
    fn one_writer_per_folder() {
        let (dir, log) = log_with(1, 1 << 20);
        let err = AuditLog::open(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(err.contains("in use by another lakegate server"), "{err}");
        drop(log);
        AuditLog::open(dir.path(), 1 << 20).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_recorded() {
        let (dir, log) = log_with(5, 1 << 20);
        drop(log);
        let path = segments(dir.path()).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":6,\"time\":\"2026").unwrap();
        drop(f);
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        drop(log);
        let v = verify(dir.path()).unwrap();
        assert_eq!(v.records, 6);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().last().unwrap().contains("\"recovered\""));
    }
}

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
        match (r.kind.as_str(), r.decision.as_str()) {
            ("decision", "refused") => row.refused += 1,
            ("completion", outcome) => {
                row.queries += 1;
                if outcome == "refused" {
                    row.review_refused += 1;
                }
                row.rows_out += r.rows_out.unwrap_or(0);
                row.bytes_out += r.bytes_out.unwrap_or(0);
                row.wall_ms += r.duration_ms.unwrap_or(0);
                row.rows_scanned += r.rows_scanned.unwrap_or(0);
                row.cpu_ms += r.cpu_ms.unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(())
}
