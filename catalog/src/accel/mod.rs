//! Acceleration: hot tables' current Delta versions held in memory as Arrow batches.
//!
//! A table named in `[acceleration] tables` (or, with `hot = true`, one read twice) is decoded
//! once per Delta version, in the background, into the batches its Delta scan yields, with an
//! index from subject key to rows. [`crate::Lake::snapshot`] hands out the held version as the
//! snapshot's provider when it is the version the query reads, and the Delta scan otherwise: a
//! query reads one version, from memory or from Parquet, never a mix, and a new commit is seen
//! at once (from Parquet until its version is loaded and swapped in). Whatever serves the rows,
//! the gateway's secure scan wraps it the same way.
//!
//! Memory: `max_bytes` bounds batches and indexes of every held version together. A load stops
//! as soon as it would pass what is left (the table is then read from Parquet, logged once per
//! version); a newer version replaces the held one, which is freed when the last query reading
//! it ends. Listed tables go first; hot ones are evicted, least read first, to make room.

mod held;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlanProperties;
use deltalake::DeltaTable;
use futures::StreamExt;

pub use held::{Accelerated, Held, HeldTable, MAX_LOOKUP_KEYS};

/// Which table version a held copy is: its version number and its stamp
/// ([`crate::TableSnapshot::stamp`]: the commit entry and the version's files). A table
/// deleted and written anew reaches the same version numbers with other files: held by
/// number alone, its erased rows came back (attacker round 27 F1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The Delta version.
    pub version: u64,
    /// The version's stamp.
    pub stamp: u64,
}

use crate::TableRef;
use lake_config::AccelerationConfig;

/// How long a version that did not fit or failed to load waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// Reads before a table counts as hot.
const HOT_AFTER_READS: u64 = 2;

/// What the accelerator knows of one table.
#[derive(Debug, Clone)]
pub enum TableState {
    /// A version is held and served.
    Held {
        /// The version.
        version: u64,
        /// Bytes of batches and index.
        bytes: u64,
        /// Rows.
        rows: u64,
        /// How long decoding took.
        load_time: Duration,
        /// The subject key column indexed, if any.
        indexed: Option<String>,
    },
    /// A version is being decoded (the held one, if any, is no longer the newest).
    Loading {
        /// The version being decoded.
        version: u64,
    },
    /// The version did not fit what the budget left; read from Parquet.
    OverBudget {
        /// The version.
        version: u64,
        /// Bytes it had taken when the load stopped.
        needed_at_least: u64,
    },
    /// The version could not be decoded; read from Parquet.
    Failed {
        /// The version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// Not loaded (a hot candidate read fewer than twice, or evicted).
    Cold,
}

/// One table's line in [`Accelerator::status`].
#[derive(Debug, Clone)]
pub struct TableStatus {
    /// Which table.
    pub table: TableRef,
    /// Named in `tables` (else hot).
    pub listed: bool,
    /// Its state.
    pub state: TableState,
    /// Snapshots served from memory.
    pub hits: u64,
    /// Snapshots of a version not held, served from Parquet.
    pub misses: u64,
}

#[derive(Debug, Default)]
struct Entry {
    held: Option<Arc<Held>>,
    state: Option<TableState>,
    /// The version queries read now (the last snapshot's).
    current: Option<Identity>,
    /// The version last refused (over budget or failed), and when.
    refused: Option<(Identity, Instant)>,
    reads: u64,
    hits: u64,
    misses: u64,
}

/// The process's held tables and their budget. Shared by a lake and its background loads.
#[derive(Debug)]
pub struct Accelerator {
    max_bytes: u64,
    listed: BTreeSet<TableRef>,
    hot: bool,
    entries: Mutex<BTreeMap<TableRef, Entry>>,
    /// Versions being loaded.
    loading: Mutex<HashSet<(TableRef, Identity)>>,
    /// One load at a time: decoding takes the cores and the memory of a whole table.
    loader: tokio::sync::Semaphore,
    loads: AtomicU64,
}

impl Accelerator {
    /// The accelerator `config` describes.
    pub fn new(config: &AccelerationConfig) -> Self {
        let listed = config
            .tables
            .iter()
            .filter_map(|n| n.split_once('.'))
            .map(|(s, t)| TableRef::new(s, t))
            .collect();
        Self {
            max_bytes: config.max_bytes,
            listed,
            hot: config.hot,
            entries: Mutex::default(),
            loading: Mutex::default(),
            loader: tokio::sync::Semaphore::new(1),
            loads: AtomicU64::new(0),
        }
    }

    /// The tables named in `tables`.
    pub fn listed(&self) -> impl Iterator<Item = &TableRef> {
        self.listed.iter()
    }

    /// The budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes held now.
    pub fn bytes_held(&self) -> u64 {
        let entries = self.entries.lock().expect("accelerator poisoned");
        entries
            .values()
            .filter_map(|e| e.held.as_ref())
            .map(|h| h.bytes)
            .sum()
    }

    /// Whether a version of `t` is being loaded (or waits to be).
    pub fn is_loading(&self, t: &TableRef) -> bool {
        self.loading
            .lock()
            .expect("accelerator poisoned")
            .iter()
            .any(|(o, _)| o == t)
    }

    /// Versions loaded since start.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Every table the accelerator has seen, listed ones first.
    pub fn status(&self) -> Vec<TableStatus> {
        let entries = self.entries.lock().expect("accelerator poisoned");
        let mut out: Vec<TableStatus> = entries
            .iter()
            .filter(|(t, e)| self.listed.contains(t) || e.held.is_some() || e.state.is_some())
            .map(|(t, e)| TableStatus {
                table: t.clone(),
                listed: self.listed.contains(t),
                state: e.state.clone().unwrap_or(TableState::Cold),
                hits: e.hits,
                misses: e.misses,
            })
            .collect();
        for t in &self.listed {
            if !entries.contains_key(t) {
                out.push(TableStatus {
                    table: t.clone(),
                    listed: true,
                    state: TableState::Cold,
                    hits: 0,
                    misses: 0,
                });
            }
        }
        out.sort_by_key(|s| (!s.listed, s.table.clone()));
        out
    }

    /// The held batches of `t` at `version`, if held; otherwise starts loading that version in
    /// the background when `t` is to be accelerated (listed, or hot), and answers `None`.
    /// `read`: a query's read (counted for hotness and hits), not the background refresh.
    pub(crate) fn serve(
        self: &Arc<Self>,
        t: &TableRef,
        identity: Identity,
        table: &DeltaTable,
        subject_key: Option<&str>,
        read: bool,
    ) -> Option<Arc<Held>> {
        let listed = self.listed.contains(t);
        {
            let mut entries = self.entries.lock().expect("accelerator poisoned");
            let entry = entries.entry(t.clone()).or_default();
            entry.reads += u64::from(read);
            entry.current = Some(identity);
            if let Some(held) = entry.held.as_ref().filter(|h| h.identity == identity) {
                entry.hits += u64::from(read);
                return Some(held.clone());
            }
            // Any other version held is never served again (older, or another table's):
            // let it go now (planned queries read Parquet instead, running ones keep their
            // batches) so the new one has its room.
            if entry.held.take().is_some() {
                entry.state = Some(TableState::Cold);
            }
            let hot = self.hot && entry.reads >= HOT_AFTER_READS;
            if !(listed || hot) {
                return None;
            }
            entry.misses += u64::from(read);
            let reads = entry.reads;
            let refused = entry
                .refused
                .filter(|(i, at)| *i == identity && at.elapsed() < RETRY_AFTER)
                .is_some();
            let over_budget = matches!(entry.state, Some(TableState::OverBudget { .. }));
            // A hot table that did not fit is tried again once it is read more than a held
            // hot table it could take the place of.
            if refused && (listed || !over_budget || !self.could_evict(&entries, t, reads)) {
                return None;
            }
        }
        if !self
            .loading
            .lock()
            .expect("accelerator poisoned")
            .insert((t.clone(), identity))
        {
            return None;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.loading
                .lock()
                .expect("accelerator poisoned")
                .remove(&(t.clone(), identity));
            return None;
        };
        let (this, t, table, key) = (
            self.clone(),
            t.clone(),
            table.clone(),
            subject_key.map(str::to_string),
        );
        runtime.spawn(async move {
            let _turn = this.loader.acquire().await;
            this.load(&t, identity, &table, key.as_deref()).await;
            this.loading
                .lock()
                .expect("accelerator poisoned")
                .remove(&(t, identity));
        });
        None
    }

    /// Decodes `t` at `version` and holds it if it fits (after evicting colder hot tables).
    async fn load(&self, t: &TableRef, identity: Identity, table: &DeltaTable, key: Option<&str>) {
        let version = identity.version;
        let listed = self.listed.contains(t);
        // Already superseded while it waited for its turn: nothing to do.
        if self.current(t) != Some(identity) {
            return;
        }
        let room = self.room_for(t, listed);
        self.set_state(t, TableState::Loading { version });
        let started = Instant::now();
        match decode(t, identity, table, key, room).await {
            Ok(Decoded::Fits(mut held)) => {
                held.load_time = started.elapsed();
                let held = Arc::new(held);
                if self.current(t) != Some(identity) {
                    // A newer version (or another table) is read now: this one never serves.
                    self.set_state(t, TableState::Cold);
                } else if self.admit(t, listed, held.clone()) {
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        table = %t,
                        version,
                        bytes = held.bytes,
                        rows = held.rows,
                        ms = held.load_time.as_millis() as u64,
                        "acceleration: table version held in memory"
                    );
                } else {
                    self.over_budget(t, identity, held.bytes);
                }
            }
            Ok(Decoded::OverBudget(at_least)) => self.over_budget(t, identity, at_least),
            Err(e) => {
                tracing::warn!(table = %t, version, "acceleration: cannot load, read from Parquet: {e}");
                self.set_state(
                    t,
                    TableState::Failed {
                        version,
                        reason: e.to_string(),
                    },
                );
                self.refused(t, identity);
            }
        }
    }

    fn current(&self, t: &TableRef) -> Option<Identity> {
        let entries = self.entries.lock().expect("accelerator poisoned");
        entries.get(t).and_then(|e| e.current)
    }

    fn refused(&self, t: &TableRef, identity: Identity) {
        let mut entries = self.entries.lock().expect("accelerator poisoned");
        entries.entry(t.clone()).or_default().refused = Some((identity, Instant::now()));
    }

    fn over_budget(&self, t: &TableRef, identity: Identity, at_least: u64) {
        let version = identity.version;
        tracing::warn!(
            table = %t,
            version,
            needed_at_least = at_least,
            max_bytes = self.max_bytes,
            "acceleration: the table does not fit [acceleration] max_bytes; read from Parquet"
        );
        self.set_state(
            t,
            TableState::OverBudget {
                version,
                needed_at_least: at_least,
            },
        );
        self.refused(t, identity);
    }

    fn set_state(&self, t: &TableRef, state: TableState) {
        let mut entries = self.entries.lock().expect("accelerator poisoned");
        entries.entry(t.clone()).or_default().state = Some(state);
    }

    /// Whether a hot table read `reads` times could evict a held one.
    fn could_evict(&self, entries: &BTreeMap<TableRef, Entry>, t: &TableRef, reads: u64) -> bool {
        entries
            .iter()
            .any(|(o, e)| o != t && e.held.is_some() && evictable(&self.listed, false, reads, o, e))
    }

    /// Bytes a load of `t` may take: the budget less every other held table it may not evict.
    fn room_for(&self, t: &TableRef, listed: bool) -> u64 {
        let entries = self.entries.lock().expect("accelerator poisoned");
        let reads = entries.get(t).map_or(0, |e| e.reads);
        let kept: u64 = entries
            .iter()
            .filter(|(o, _)| *o != t)
            .filter_map(|(o, e)| e.held.as_ref().map(|h| (o, e, h)))
            .filter(|(o, e, _)| !evictable(&self.listed, listed, reads, o, e))
            .map(|(_, _, h)| h.bytes)
            .sum();
        self.max_bytes.saturating_sub(kept)
    }

    /// Holds `held` if it fits, evicting hot tables read less (least read first).
    fn admit(&self, t: &TableRef, listed: bool, held: Arc<Held>) -> bool {
        let mut entries = self.entries.lock().expect("accelerator poisoned");
        let reads = entries.get(t).map_or(0, |e| e.reads);
        let mut used: u64 = entries
            .iter()
            .filter(|(o, _)| *o != t)
            .filter_map(|(_, e)| e.held.as_ref())
            .map(|h| h.bytes)
            .sum();
        let mut victims: Vec<(u64, TableRef)> = entries
            .iter()
            .filter(|(o, e)| *o != t && e.held.is_some())
            .filter(|(o, e)| evictable(&self.listed, listed, reads, o, e))
            .map(|(o, e)| (e.reads, o.clone()))
            .collect();
        victims.sort();
        let mut evict = Vec::new();
        for (_, v) in victims {
            if used + held.bytes <= self.max_bytes {
                break;
            }
            used -= entries[&v].held.as_ref().map_or(0, |h| h.bytes);
            evict.push(v);
        }
        if used + held.bytes > self.max_bytes {
            return false;
        }
        for v in evict {
            tracing::info!(table = %v, "acceleration: evicted for a table read more");
            let e = entries.get_mut(&v).expect("listed above");
            e.held = None;
            e.state = Some(TableState::Cold);
        }
        let entry = entries.entry(t.clone()).or_default();
        entry.state = Some(TableState::Held {
            version: held.version,
            bytes: held.bytes,
            rows: held.rows,
            load_time: held.load_time,
            indexed: held.indexed_column().map(str::to_string),
        });
        entry.held = Some(held);
        true
    }
}

/// Whether `other` (held) may be evicted for a table that is `listed` and was read `reads`
/// times: listed tables never are; hot ones for a listed table, or for one read more.
fn evictable(
    listed_set: &BTreeSet<TableRef>,
    listed: bool,
    reads: u64,
    other: &TableRef,
    e: &Entry,
) -> bool {
    !listed_set.contains(other) && (listed || e.reads < reads)
}

enum Decoded {
    Fits(Held),
    OverBudget(u64),
}

/// Reads every row of `table` (at `version`) into memory, stopping past `room` bytes.
async fn decode(
    t: &TableRef,
    identity: Identity,
    table: &DeltaTable,
    key: Option<&str>,
    room: u64,
) -> datafusion::error::Result<Decoded> {
    let provider = crate::delta_scan(table, false).await?;
    let state = SessionStateBuilder::new().with_default_features().build();
    let plan = provider.scan(&state, None, &[], None).await?;
    let schema = plan.schema();
    let ctx = state.task_ctx();
    let mut partitions = Vec::new();
    let mut bytes = 0u64;
    let mut rows = 0u64;
    for p in 0..plan.output_partitioning().partition_count() {
        let mut stream = plan.execute(p, ctx.clone())?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = compact(batch?)?;
            bytes += batch.get_array_memory_size() as u64;
            rows += batch.num_rows() as u64;
            if bytes > room {
                return Ok(Decoded::OverBudget(bytes));
            }
            batches.push(batch);
        }
        partitions.push(batches);
    }
    let index = match key.and_then(|k| schema.index_of(k).ok()) {
        Some(i) if held::indexable(schema.field(i).data_type()) => {
            let index = held::KeyIndex::build(&partitions, i)?;
            bytes += index.bytes();
            if bytes > room {
                return Ok(Decoded::OverBudget(bytes));
            }
            Some(index)
        }
        _ => None,
    };
    Ok(Decoded::Fits(Held {
        table: t.clone(),
        version: identity.version,
        identity,
        schema,
        partitions,
        index,
        bytes,
        rows,
        load_time: Duration::ZERO,
    }))
}

/// `batch` holding only its own values: view arrays the Parquet reader made share the column
/// chunk's buffers with their siblings, which would be held (and counted) once per batch.
fn compact(batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as _,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as _,
            _ => c.clone(),
        })
        .collect::<Vec<_>>();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}
