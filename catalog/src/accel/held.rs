//! One table version held in memory: its batches (in the partitions its Delta scan read them
//! in), an index from subject key to rows, and the provider that serves them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::TableRef;

/// The most keys one lookup takes (longer `IN` lists scan the table).
pub const MAX_LOOKUP_KEYS: usize = 4096;

/// The hash the key index is built with (fixed: the index is built once, looked up often).
const INDEX_HASH: RandomState = RandomState::with_seed(0x6c61_6b65_6761_7465);

/// A table version decoded into memory.
#[derive(Debug)]
pub struct Held {
    pub(super) table: TableRef,
    pub(super) version: u64,
    /// The version's files (see [`crate::accel::Identity`]).
    pub(super) identity: super::Identity,
    pub(super) schema: SchemaRef,
    pub(super) partitions: Vec<Vec<RecordBatch>>,
    pub(super) index: Option<KeyIndex>,
    pub(super) bytes: u64,
    pub(super) rows: u64,
    pub(super) load_time: Duration,
}

impl Held {
    /// Which table.
    pub fn table(&self) -> &TableRef {
        &self.table
    }

    /// The columns, as the Delta scan yields them.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The Delta version held.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bytes held: batches and index.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows held.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// How long decoding took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The subject key column the index serves, if any.
    pub fn indexed_column(&self) -> Option<&str> {
        self.index
            .as_ref()
            .map(|i| self.schema.field(i.column).name().as_str())
    }

    /// The keys of `filter` when it is a lookup the index answers: `key = literal` or
    /// `key IN (literals)`, the column bare and every literal of the key's own type (so nothing
    /// is cast and nothing can fail on any row), at most [`MAX_LOOKUP_KEYS`].
    pub fn lookup_keys(&self, filter: &Expr) -> Option<Vec<ScalarValue>> {
        let index = self.index.as_ref()?;
        let key = self.schema.field(index.column);
        let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == *key.name());
        let literal = |e: &Expr| match e {
            Expr::Literal(v, _) if !v.is_null() && v.data_type() == *key.data_type() => {
                Some(v.clone())
            }
            _ => None,
        };
        match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if is_key(left) {
                    literal(right).map(|v| vec![v])
                } else if is_key(right) {
                    literal(left).map(|v| vec![v])
                } else {
                    None
                }
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) if is_key(expr) && !list.is_empty() && list.len() <= MAX_LOOKUP_KEYS => {
                list.iter().map(literal).collect()
            }
            _ => None,
        }
    }

    /// The rows whose key may be one of `keys` (hash matches: the filter above decides).
    fn lookup(&self, keys: &[ScalarValue]) -> Result<Vec<RecordBatch>> {
        let Some(index) = &self.index else {
            return Ok(vec![]);
        };
        let key_type = self.schema.field(index.column).data_type();
        let mut positions: Vec<u64> = Vec::new();
        for k in keys {
            let array = cast(&k.to_array_of_size(1)?, key_type)?;
            let mut h = [0u64; 1];
            create_hashes([&array], &INDEX_HASH, &mut h)?;
            let start = index.entries.partition_point(|e| e.0 < h[0]);
            positions.extend(
                index.entries[start..]
                    .iter()
                    .take_while(|e| e.0 == h[0])
                    .map(|e| e.1),
            );
        }
        positions.sort_unstable();
        positions.dedup();
        let mut out = Vec::new();
        let batches = self.batches();
        let mut i = 0;
        while i < positions.len() {
            let batch = (positions[i] >> 32) as usize;
            let mut rows = Vec::new();
            while i < positions.len() && (positions[i] >> 32) as usize == batch {
                rows.push(positions[i] as u32);
                i += 1;
            }
            out.push(take_record_batch(batches[batch], &UInt32Array::from(rows))?);
        }
        Ok(out)
    }

    /// Every batch, in partition order (the numbering the index uses).
    fn batches(&self) -> Vec<&RecordBatch> {
        self.partitions.iter().flatten().collect()
    }
}

/// Subject key hash → (batch << 32 | row), sorted by hash.
#[derive(Debug)]
pub(super) struct KeyIndex {
    column: usize,
    entries: Vec<(u64, u64)>,
}

impl KeyIndex {
    /// The index of `column` over `partitions` (numbered as [`Held::batches`] numbers them).
    pub(super) fn build(partitions: &[Vec<RecordBatch>], column: usize) -> Result<Self> {
        let mut entries = Vec::new();
        let mut hashes = Vec::new();
        for (b, batch) in partitions.iter().flatten().enumerate() {
            let keys: &ArrayRef = batch.column(column);
            hashes.clear();
            hashes.resize(keys.len(), 0);
            create_hashes([keys], &INDEX_HASH, &mut hashes)?;
            entries.extend(
                hashes
                    .iter()
                    .enumerate()
                    // A NULL key equals nothing.
                    .filter(|(r, _)| keys.is_valid(*r))
                    .map(|(r, h)| (*h, ((b as u64) << 32) | r as u64)),
            );
        }
        entries.sort_unstable();
        entries.shrink_to_fit();
        Ok(Self { column, entries })
    }

    /// Bytes the index holds.
    pub(super) fn bytes(&self) -> u64 {
        (self.entries.capacity() * std::mem::size_of::<(u64, u64)>()) as u64
    }
}

/// The data type an index over `t` can serve (keys compared by their own type).
pub(super) fn indexable(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Date32
        )
}

/// A held version as a table provider: what the secure scan wraps instead of the Delta scan.
/// It holds the version weakly: a plan kept for later (a prepared statement) does not keep a
/// retired version in memory past the budget (attacker round 27 F4); planned after the
/// version was let go, it reads the same version from Parquet. A running scan holds the
/// batches it reads until it ends.
#[derive(Debug)]
pub struct HeldTable {
    held: std::sync::Weak<Held>,
    /// The Delta scan of the same version.
    parquet: Arc<dyn TableProvider>,
}

impl HeldTable {
    pub(crate) fn new(held: &Arc<Held>, parquet: Arc<dyn TableProvider>) -> Self {
        Self {
            held: Arc::downgrade(held),
            parquet,
        }
    }
}

/// A snapshot's held version, as the secure scan sees it (weakly, see [`HeldTable`]).
#[derive(Debug, Clone)]
pub struct Accelerated {
    version: u64,
    held: std::sync::Weak<Held>,
}

impl Accelerated {
    pub(crate) fn new(held: &Arc<Held>) -> Self {
        Self {
            version: held.version,
            held: Arc::downgrade(held),
        }
    }

    /// The version held.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The held version, unless it was let go since (then the scan reads Parquet).
    pub fn get(&self) -> Option<Arc<Held>> {
        self.held.upgrade()
    }
}

#[async_trait]
impl TableProvider for HeldTable {
    fn schema(&self) -> SchemaRef {
        self.parquet.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let Some(held) = self.held.upgrade() else {
            return self.parquet.supports_filters_pushdown(filters);
        };
        // A lookup narrows the rows read; the filter itself stays above.
        Ok(filters
            .iter()
            .map(|f| match held.lookup_keys(f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(held) = self.held.upgrade() else {
            return self.parquet.scan(state, projection, filters, limit).await;
        };
        let looked_up = filters.iter().find_map(|f| held.lookup_keys(f));
        let source = match looked_up {
            Some(keys) => MemorySourceConfig::try_new(
                &[held.lookup(&keys)?],
                held.schema.clone(),
                projection.cloned(),
            )?,
            None => MemorySourceConfig::try_new(
                &held.partitions,
                held.schema.clone(),
                projection.cloned(),
            )?,
        };
        // Sizes of the whole table would show in EXPLAIN for every user.
        let source = source.with_show_sizes(false).with_limit(limit);
        Ok(datafusion::datasource::source::DataSourceExec::from_data_source(source))
    }
}
