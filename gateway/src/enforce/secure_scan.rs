//! The secure scan: the only way a query reads a table of the lake, and the one place where a
//! grant becomes part of the plan.
//!
//! ```text
//! before (what DataFusion would plan):   after (what the gateway registers):
//!   TableScan: lake.hr.employees           TableScan: lake.hr.employees    <- SecureTable
//!                                            SecureScanExec                 <- rows, masks, columns
//!                                              DeltaScan (raw columns)      <- no user filter, no limit
//! ```
//!
//! `SecureScanExec` evaluates the grant's row predicate on raw values, then replaces masked
//! columns by their masked values and drops hidden ones — before any user expression runs, so
//! filters, joins, sorts and groups see only what the grant serves. User filters reach the Delta
//! scan only when the grant serves every column raw and every row; only then are statistics
//! reported (the raw scan's, and the Delta log's column bounds as inexact estimates), so no
//! aggregate is answered from raw file statistics of rows or values the grant hides. Aggregate-only columns are served raw inside
//! the engine; `aggregate_only` decides what of them may leave.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use catalog::TableSnapshot;
use policy::{ColumnTreatment, Grant, Mask, RowPredicate};

use crate::enforce::masks;
use crate::enforce::secure_exec::{ScanSpec, SecureScanExec};

/// The column a secure scan adds, for the minimum-group check only, when asked to: the raw
/// subject key. User SQL cannot name it (it is not in the table's schema at planning time).
pub const SUBJECT_COLUMN: &str = "__lakegate_subject";

/// The field metadata key that marks the subject column the secure scan serves.
const SUBJECT_MARK_KEY: &str = "lakegate.subject";

/// A secret of this process, put on the served subject column's field: a column the user made
/// and named so (by any means) does not carry it, so it cannot pass for the subject key.
fn subject_mark() -> &'static str {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// Whether `field` is the subject column served by a secure scan of this process.
pub(crate) fn is_subject_field(field: &Field) -> bool {
    field.name() == SUBJECT_COLUMN
        && field.metadata().get(SUBJECT_MARK_KEY).map(String::as_str) == Some(subject_mark())
}

/// One served column: where it comes from in the raw table and how it is treated.
#[derive(Debug, Clone)]
struct ServedColumn {
    raw_index: usize,
    mask: Option<Mask>,
}

/// A table of the lake as one session may read it.
#[derive(Debug)]
pub struct SecureTable {
    snapshot: TableSnapshot,
    grant: Arc<Grant>,
    served: Vec<ServedColumn>,
    schema: SchemaRef,
    mask_key: Option<Arc<[u8]>>,
    storage: Arc<HashMap<String, String>>,
}

impl SecureTable {
    /// The secure view of `snapshot` under `grant`. Refuses what it cannot enforce.
    pub fn try_new(
        snapshot: TableSnapshot,
        grant: Arc<Grant>,
        mask_key: Option<Arc<[u8]>>,
        storage: Arc<HashMap<String, String>>,
    ) -> Result<Self> {
        if !grant.allowed {
            return Err(DataFusionError::Internal(
                "a secure table was built for a denied grant".into(),
            ));
        }
        let mut served = Vec::new();
        let mut fields = Vec::new();
        for (i, field) in snapshot.schema.fields().iter().enumerate() {
            if field
                .name()
                .to_ascii_lowercase()
                .starts_with(crate::statement::RESERVED_PREFIX)
            {
                // A stored column with lakegate's own prefix could pass for the subject key:
                // it is never served.
                continue;
            }
            match grant.column(field.name()) {
                ColumnTreatment::Raw => {
                    served.push(ServedColumn {
                        raw_index: i,
                        mask: None,
                    });
                    fields.push(field.as_ref().clone());
                }
                ColumnTreatment::Masked(mask) => {
                    let t = masks::served_type(mask, field.data_type()).map_err(|e| {
                        DataFusionError::Plan(format!(
                            "column {}.{}: {}",
                            snapshot.table,
                            field.name(),
                            e.strip_backtrace()
                        ))
                    })?;
                    served.push(ServedColumn {
                        raw_index: i,
                        mask: Some(mask.clone()),
                    });
                    fields.push(Field::new(field.name(), t, true));
                }
                ColumnTreatment::AggregateOnly { .. } => {
                    // Raw inside the engine; the aggregate checker decides what may leave.
                    served.push(ServedColumn {
                        raw_index: i,
                        mask: None,
                    });
                    fields.push(field.as_ref().clone());
                }
                ColumnTreatment::Hidden => {}
            }
        }
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            snapshot,
            grant,
            served,
            mask_key,
            storage,
        })
    }

    /// The minimum group size of `column` when it is aggregate-only.
    pub fn aggregate_only(&self, column: &str) -> Option<u64> {
        match self.grant.column(column) {
            ColumnTreatment::AggregateOnly { min_group, .. } => Some(*min_group),
            _ => None,
        }
    }

    /// The differential privacy of `column` when it is released with noise.
    pub fn column_privacy(&self, column: &str) -> Option<policy::Privacy> {
        match self.grant.column(column) {
            ColumnTreatment::AggregateOnly { privacy, .. } => *privacy,
            _ => None,
        }
    }

    /// The smallest ε of the table's noisy columns: a table with one releases every
    /// aggregate-only column of it with differential privacy.
    pub fn epsilon(&self) -> Option<policy::Epsilon> {
        self.grant
            .columns
            .values()
            .filter_map(|t| match t {
                ColumnTreatment::AggregateOnly {
                    privacy: Some(p), ..
                } => Some(p.epsilon),
                _ => None,
            })
            .min()
    }

    /// How many columns the table serves.
    pub fn served_len(&self) -> usize {
        self.served.len()
    }

    /// Whether any served column is aggregate-only.
    pub fn has_aggregate_only(&self) -> bool {
        self.min_group().is_some()
    }

    /// The largest minimum group size of the table's aggregate-only columns.
    pub fn min_group(&self) -> Option<u64> {
        self.grant
            .columns
            .values()
            .filter_map(|t| match t {
                ColumnTreatment::AggregateOnly { min_group, .. } => Some(*min_group),
                _ => None,
            })
            .max()
    }

    /// This table with the raw subject key appended as [`SUBJECT_COLUMN`].
    pub fn with_subject_column(&self) -> Result<Self> {
        let key = self.snapshot.subject_key.as_deref().ok_or_else(|| {
            DataFusionError::Plan(format!(
                "table {} declares no subject key: its aggregate-only columns release nothing",
                self.snapshot.table
            ))
        })?;
        let raw_index = self.snapshot.schema.index_of(key)?;
        let mut served = self.served.clone();
        served.push(ServedColumn {
            raw_index,
            mask: None,
        });
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(
            Field::new(
                SUBJECT_COLUMN,
                self.snapshot.schema.field(raw_index).data_type().clone(),
                true,
            )
            .with_metadata([(SUBJECT_MARK_KEY.to_string(), subject_mark().to_string())].into()),
        );
        Ok(Self {
            snapshot: self.snapshot.clone(),
            grant: self.grant.clone(),
            served,
            schema: Arc::new(Schema::new(fields)),
            mask_key: self.mask_key.clone(),
            storage: self.storage.clone(),
        })
    }

    /// The snapshot behind this table (its version is what audit records).
    pub fn snapshot(&self) -> &TableSnapshot {
        &self.snapshot
    }

    /// The grant this table enforces.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Whether `filter` is a lookup of the subject key that the held version's index answers,
    /// on a key served raw: an equality of the bare column with literals of its own type,
    /// which cannot fail or differ on any row (hidden rows are looked up, then dropped by the
    /// barrier, as a scan reads them and drops them).
    fn lookup(&self, filter: &Expr) -> bool {
        let Some(held) = self.snapshot.accelerated.as_ref().and_then(|a| a.get()) else {
            return false;
        };
        let Some(key) = held.indexed_column() else {
            return false;
        };
        matches!(self.grant.column(key), ColumnTreatment::Raw)
            && self.schema.field_with_name(key).is_ok()
            && held.lookup_keys(filter).is_some()
    }

    /// What EXPLAIN says of the raw rows' source when they are held in memory.
    fn accelerated(&self, filters: &[Expr]) -> Option<String> {
        // Let go since planning: the scan reads Parquet.
        let held = self.snapshot.accelerated.as_ref()?.get()?;
        let lookup = filters.iter().any(|f| held.lookup_keys(f).is_some());
        Some(format!(
            "accelerated=memory (version {}{})",
            held.version(),
            if lookup { ", key lookup" } else { "" }
        ))
    }

    fn serves_everything_raw(&self) -> bool {
        self.served.len() == self.snapshot.schema.fields().len()
            && self.served.iter().all(|c| c.mask.is_none())
            && self.grant.rows == RowPredicate::All
            && !self.has_aggregate_only()
    }
}

#[async_trait]
impl TableProvider for SecureTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        if self.serves_everything_raw() {
            // Nothing is hidden, so the raw scan may prune with the user's filters.
            self.snapshot.provider.supports_filters_pushdown(filters)
        } else {
            // Everything stays above the barrier, except key lookups a held version answers:
            // they only narrow the raw rows read, and stay above too.
            Ok(filters
                .iter()
                .map(|f| match self.lookup(f) {
                    true => TableProviderFilterPushDown::Inexact,
                    false => TableProviderFilterPushDown::Unsupported,
                })
                .collect())
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.served.len()).collect(),
        };
        let output_schema = Arc::new(self.schema.project(&wanted)?);
        let predicate = match &self.grant.rows {
            RowPredicate::None => return Ok(Arc::new(EmptyExec::new(output_schema))),
            RowPredicate::All => None,
            RowPredicate::Where(p) => Some(p),
        };

        // Raw columns to read: the wanted ones, then those the row predicate needs.
        let mut raw: Vec<usize> = wanted.iter().map(|&i| self.served[i].raw_index).collect();
        raw.sort_unstable();
        raw.dedup();
        if let Some(p) = predicate {
            for c in p.columns() {
                let i = self.snapshot.schema.index_of(&c)?;
                if !raw.contains(&i) {
                    raw.push(i);
                }
            }
        }
        let everything_raw = self.serves_everything_raw();
        // Restricted: only key lookups reach the held version (never the Delta scan).
        let lookups: Vec<Expr> = filters.iter().filter(|f| self.lookup(f)).cloned().collect();
        let inner = self
            .snapshot
            .provider
            .scan(
                state,
                Some(&raw),
                if everything_raw { filters } else { &lookups },
                if predicate.is_none() { limit } else { None },
            )
            .await?;
        let spec = ScanSpec {
            table: self.snapshot.table.to_string(),
            url: self.snapshot.url.clone(),
            version: self.snapshot.version,
            raw_projection: raw,
            filters: if everything_raw {
                filters.to_vec()
            } else {
                vec![]
            },
            limit: if predicate.is_none() { limit } else { None },
            predicate: predicate.cloned(),
            outputs: wanted
                .iter()
                .map(|&i| {
                    let c = &self.served[i];
                    (
                        self.snapshot.schema.field(c.raw_index).name().clone(),
                        c.mask.clone(),
                    )
                })
                .collect(),
            partitions: inner.output_partitioning().partition_count(),
            repartition: None,
            parquet_pushdown: self.snapshot.parquet_pushdown,
            accelerated: self.accelerated(if everything_raw { filters } else { &lookups }),
        };
        let bounds = inner
            .schema()
            .fields()
            .iter()
            .map(|f| self.snapshot.bounds.get(f.name()).cloned())
            .collect();
        Ok(Arc::new(
            SecureScanExec::planned(
                spec,
                output_schema,
                inner,
                self.mask_key.clone(),
                self.storage.clone(),
            )?
            .served_as_stored(everything_raw)
            .with_bounds(bounds),
        ))
    }
}
