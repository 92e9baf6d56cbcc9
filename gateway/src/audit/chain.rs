//! The chain itself: appending fsynced records to segment files, anchoring its end, and
//! verifying it (hashes, sequence, anchors).

use super::*;

pub(super) struct Tail {
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
    /// Free space below which new work is refused ([`AuditLog::with_min_free`]).
    min_free: u64,
    tail: Mutex<Tail>,
    /// Held for the life of the log: one writer per audit folder, or the chain would fork.
    _lock: File,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
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
            min_free: lake_config::DEFAULT_AUDIT_MIN_FREE_BYTES,
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
            let mut r = AuditRecord::new(
                RecordKind::Recovery,
                Decision::Recovered,
                "",
                "lakegate",
                "",
            );
            r.reason = Some(format!(
                "a torn record of {bytes} bytes at the end of {} was cut off after a crash",
                segment_path(dir, segment).display()
            ));
            log.append(r)?;
        }
        Ok(log)
    }

    /// Refuses to record newly allowed work (a statement's `allowed` decision) while the audit
    /// folder's file system has less than `bytes` free, and every record below half of it: a
    /// full disk stops the trail, and with it every query of every user, so the trail stops
    /// taking new work first and keeps the rest for the records of work already running
    /// (attacker round 21: accepted 1 MB statements grew the trail 30-46 MB/s).
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Whether `record`, `len` bytes long, may be written with `free` bytes left.
    fn room_for(&self, record: &AuditRecord, len: u64) -> Result<(), AuditError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free = free_bytes(&self.dir).map_err(io_err(&self.dir))?;
        let opens_work =
            record.kind == RecordKind::Decision && record.decision == Decision::Allowed;
        let reserve = if opens_work {
            self.min_free
        } else {
            self.min_free / 2
        };
        if free.saturating_sub(len) < reserve {
            tracing::error!(
                dir = %self.dir.display(),
                free,
                min_free = self.min_free,
                "the audit disk is nearly full: records refused"
            );
            return Err(AuditError::Full {
                path: self.dir.clone(),
                free,
                min_free: self.min_free,
            });
        }
        Ok(())
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
        // One statvfs per fsynced append: microseconds against milliseconds.
        self.room_for(&record, line.len() as u64)?;
        let path = segment_path(&self.dir, tail.segment);
        tail.file.write_all(&line).map_err(io_err(&path))?;
        tail.file.sync_data().map_err(io_err(&path))?;
        tail.seq = record.seq;
        tail.hash = record.hash.clone();
        tail.size += line.len() as u64;
        Ok(record)
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
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
pub(super) const COPIED_HINT: &str = ". If this audit folder was emptied, replaced or copied apart from its \
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
