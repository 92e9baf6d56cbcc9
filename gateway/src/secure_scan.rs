//! The secure scan: the only way a query reads a table of the lake.
//!
//! ```text
//! before (what DataFusion would plan):      after (what the gateway registers):
//!   TableScan: lake.health.visits             TableScan: lake.health.visits   <- SecureTable
//!                                               SecureScanExec                 <- unknown statistics
//!                                                 DeltaScan ...                <- the raw Delta scan
//! ```
//!
//! The table's schema is the grant's: hidden columns are absent. Statistics are unknown, so no
//! aggregate is answered from raw file statistics. Filters reach the Delta scan only when the
//! grant serves every column raw and every row; the masks and row predicates that make the scan a
//! barrier come with the enforcement core and refuse to be served until then (fail closed).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

use catalog::TableSnapshot;
use policy::{ColumnTreatment, Grant, RowPredicate};

/// A table of the lake as one session may read it.
#[derive(Debug)]
pub struct SecureTable {
    snapshot: TableSnapshot,
    grant: Grant,
    /// Indices into the raw schema of the columns served, in table order.
    served: Vec<usize>,
    schema: SchemaRef,
}

impl SecureTable {
    /// The secure view of `snapshot` under `grant`. Refuses treatments it cannot yet enforce.
    pub fn try_new(snapshot: TableSnapshot, grant: Grant) -> Result<Self> {
        if !grant.allowed {
            return Err(DataFusionError::Internal(
                "a secure table was built for a denied grant".into(),
            ));
        }
        if grant.rows != RowPredicate::All {
            return Err(not_enforced(&snapshot, "row predicates"));
        }
        let mut served = Vec::new();
        for (i, field) in snapshot.schema.fields().iter().enumerate() {
            match grant.column(field.name()) {
                ColumnTreatment::Raw => served.push(i),
                ColumnTreatment::Hidden => {}
                ColumnTreatment::Masked(_) => return Err(not_enforced(&snapshot, "column masks")),
                ColumnTreatment::AggregateOnly { .. } => {
                    return Err(not_enforced(&snapshot, "aggregate-only columns"))
                }
            }
        }
        let schema = Arc::new(snapshot.schema.project(&served)?);
        Ok(Self {
            snapshot,
            grant,
            served,
            schema,
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

    fn serves_everything_raw(&self) -> bool {
        self.served.len() == self.snapshot.schema.fields().len()
            && self.grant.rows == RowPredicate::All
    }
}

fn not_enforced(snapshot: &TableSnapshot, what: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "table {} is granted with {what}, which this lakegate build cannot enforce yet; the query is refused",
        snapshot.table
    ))
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
            Ok(vec![
                TableProviderFilterPushDown::Unsupported;
                filters.len()
            ])
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Map the projection on the served schema to the raw schema.
        let raw_projection: Vec<usize> = match projection {
            Some(p) => p.iter().map(|&i| self.served[i]).collect(),
            None => self.served.clone(),
        };
        let filters = if self.serves_everything_raw() {
            filters
        } else {
            &[]
        };
        let inner = self
            .snapshot
            .provider
            .scan(state, Some(&raw_projection), filters, limit)
            .await?;
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(SecureScanExec::try_new(
            self.snapshot.table.to_string(),
            schema,
            inner,
        )?))
    }
}

/// The physical side of the secure scan. It reports unknown statistics, whatever the raw scan
/// knows, so that no answer is computed from file statistics.
#[derive(Debug)]
pub struct SecureScanExec {
    table: String,
    schema: SchemaRef,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl SecureScanExec {
    fn try_new(table: String, schema: SchemaRef, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let input_schema: &Schema = &input.schema();
        if input_schema.fields().len() != schema.fields().len() {
            return Err(DataFusionError::Internal(format!(
                "secure scan of {table}: the raw scan yields {} columns, {} expected",
                input_schema.fields().len(),
                schema.fields().len()
            )));
        }
        let properties = input.properties().clone();
        Ok(Self {
            table,
            schema,
            input,
            properties,
        })
    }
}

impl DisplayAs for SecureScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SecureScanExec: table={}", self.table)
    }
}

impl ExecutionPlan for SecureScanExec {
    fn name(&self) -> &str {
        "SecureScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "SecureScanExec takes exactly one input".into(),
            ));
        }
        Ok(Arc::new(SecureScanExec::try_new(
            self.table.clone(),
            self.schema.clone(),
            children.pop().expect("one child"),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}
