//! How a barrier node is made (planned here, or decoded from the wire) and what it does to one
//! batch: rows first (on raw values), then masks, then the served columns.

use super::*;

/// Compiles the row predicate against the raw scan's output schema (with type coercion).
fn compile(
    p: &Predicate,
    input: &Schema,
    key: Option<&Arc<[u8]>>,
) -> Result<Arc<dyn PhysicalExpr>> {
    let df_schema = DFSchema::try_from(input.clone())?;
    let expr = row_filter::to_expr(p, key)?;
    let mut coerce = TypeCoercionRewriter::new(&df_schema);
    let expr = expr.rewrite(&mut coerce)?.data;
    create_physical_expr(
        &expr,
        &df_schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
}

fn output_indices(spec: &ScanSpec, input: &Schema) -> Result<Vec<(usize, Option<Mask>)>> {
    spec.outputs
        .iter()
        .map(|(name, mask)| Ok((input.index_of(name)?, mask.clone())))
        .collect()
}

impl SecureScanExec {
    /// A barrier over a Delta scan planned in this process.
    pub(crate) fn planned(
        spec: ScanSpec,
        schema: SchemaRef,
        input: Arc<dyn ExecutionPlan>,
        mask_key: Option<Arc<[u8]>>,
        storage: Arc<HashMap<String, String>>,
    ) -> Result<Self> {
        let predicate = match &spec.predicate {
            Some(p) => Some(compile(p, &input.schema(), mask_key.as_ref())?),
            None => None,
        };
        let outputs = output_indices(&spec, &input.schema())?;
        Ok(Self::new(
            spec,
            schema,
            mask_key,
            storage,
            Some(Planned {
                input,
                predicate,
                outputs,
                dynamic: vec![],
                bounds: Arc::new([]),
            }),
        ))
    }

    /// The Delta log's bounds of the raw scan's columns (in its output order), reported as
    /// inexact statistics when the table is served exactly as stored.
    pub(crate) fn with_bounds(mut self, bounds: Vec<Option<ColumnBounds>>) -> Self {
        if let Some(planned) = &mut self.planned {
            planned.bounds = bounds.into();
        }
        self
    }

    pub(in crate::enforce) fn new(
        spec: ScanSpec,
        schema: SchemaRef,
        mask_key: Option<Arc<[u8]>>,
        storage: Arc<HashMap<String, String>>,
        planned: Option<Planned>,
    ) -> Self {
        // Fresh properties: nothing the raw scan knows (orderings, constants, partitioning
        // expressions) is claimed for the served columns.
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(spec.partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            spec: Arc::new(spec),
            schema,
            mask_key,
            storage,
            planned,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
            as_stored: false,
        }
    }

    /// Marks the table as served exactly as stored (every column raw, every row, nothing
    /// aggregate-only): the raw scan's statistics are reported and dynamic filters reach it.
    pub(crate) fn served_as_stored(mut self, as_stored: bool) -> Self {
        self.as_stored = as_stored;
        self
    }

    /// This barrier over another raw scan of the same table (split, or given dynamic filters):
    /// same schema, key, storage and served-as-stored mark, fresh metrics.
    pub(super) fn replanned(&self, spec: ScanSpec, planned: Planned) -> Arc<dyn ExecutionPlan> {
        Arc::new(
            SecureScanExec::new(
                spec,
                self.schema.clone(),
                self.mask_key.clone(),
                self.storage.clone(),
                Some(planned),
            )
            .served_as_stored(self.as_stored),
        )
    }

    /// Served exactly as stored, and nothing in the spec says otherwise: no row predicate, no
    /// mask (defence in depth for what may see the raw scan: statistics, dynamic filters).
    pub(super) fn serves_raw_rows(&self) -> bool {
        self.as_stored
            && self.spec.predicate.is_none()
            && self.spec.outputs.iter().all(|(_, m)| m.is_none())
    }

    /// Plans the Delta scan in this process (after decoding on an executor).
    pub(super) async fn plan(
        spec: Arc<ScanSpec>,
        storage: Arc<HashMap<String, String>>,
        key: Option<Arc<[u8]>>,
        ctx: Arc<TaskContext>,
    ) -> Result<Planned> {
        let table = deltalake::DeltaTableBuilder::from_url(spec.url.clone())
            .map(|b| {
                b.with_storage_options((*storage).clone())
                    .with_version(spec.version)
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .load()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let provider = catalog::delta_scan(&table, spec.parquet_pushdown).await?;
        let state = SessionStateBuilder::new()
            .with_config(ctx.session_config().clone())
            .with_runtime_env(ctx.runtime_env())
            .with_default_features()
            .build();
        let input = provider
            .scan(
                &state,
                Some(&spec.raw_projection),
                &spec.filters,
                spec.limit,
            )
            .await?;
        let input = match spec.repartition {
            Some(target) => {
                // The planner chose to split; split the same files the same way whatever this
                // process's size threshold says.
                let mut options = ctx.session_config().options().as_ref().clone();
                options.optimizer.repartition_file_scans = true;
                options.optimizer.repartition_file_min_size = 0;
                input.repartitioned(target, &options)?.unwrap_or(input)
            }
            None => input,
        };
        if input.output_partitioning().partition_count() != spec.partitions {
            return Err(DataFusionError::Execution(format!(
                "secure scan of {}: the Delta scan has {} partitions here, {} were planned",
                spec.table,
                input.output_partitioning().partition_count(),
                spec.partitions
            )));
        }
        let predicate = match &spec.predicate {
            Some(p) => Some(compile(p, &input.schema(), key.as_ref())?),
            None => None,
        };
        let outputs = output_indices(&spec, &input.schema())?;
        Ok(Planned {
            input,
            predicate,
            outputs,
            dynamic: vec![],
            bounds: Arc::new([]),
        })
    }
}

/// The barrier on one batch: rows first (on raw values), then masks, then the served columns.
pub(super) fn secure(
    batch: RecordBatch,
    planned: &Planned,
    schema: &SchemaRef,
    key: Option<&[u8]>,
    metrics: &BaselineMetrics,
    scanned: &Count,
) -> Result<RecordBatch> {
    let _timer = metrics.elapsed_compute().timer();
    scanned.add(batch.num_rows());
    let batch = match &planned.predicate {
        None => batch,
        Some(p) => {
            let keep = p.evaluate(&batch)?.into_array(batch.num_rows())?;
            let keep = keep
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| {
                    DataFusionError::Internal("the row predicate is not boolean".into())
                })?;
            // NULL counts as false.
            filter_record_batch(&batch, keep)?
        }
    };
    let columns = planned
        .outputs
        .iter()
        .map(|(i, mask)| {
            let raw = batch.column(*i);
            match mask {
                None => Ok(raw.clone()),
                Some(m) => masks::apply(m, raw, key),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

#[cfg(test)]
mod tests {
    //! The barrier on one batch, as every query meets it: hidden rows go on raw values before
    //! any mask, masked columns leave masked, and only the served columns leave.
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use policy::predicate::{CmpOp, Operand, Value};

    fn raw() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("district", DataType::Utf8, true),
            Field::new("salary", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["Zhang Wei", "Li Na", "Wang Fang"])),
                Arc::new(StringArray::from(vec!["Chaoyang", "Haidian", "Chaoyang"])),
                Arc::new(Int64Array::from(vec![9000, 12000, 15000])),
            ],
        )
        .unwrap()
    }

    /// The barrier for `predicate`, serving `outputs` (raw column, mask).
    fn barrier(predicate: Option<Predicate>, outputs: &[(&str, Option<Mask>)]) -> Planned {
        let input = raw().schema();
        let spec_outputs: Vec<(String, Option<Mask>)> = outputs
            .iter()
            .map(|(n, m)| (n.to_string(), m.clone()))
            .collect();
        Planned {
            input: Arc::new(EmptyExec::new(input.clone())),
            predicate: predicate.map(|p| compile(&p, &input, None).unwrap()),
            outputs: spec_outputs
                .iter()
                .map(|(n, m)| (input.index_of(n).unwrap(), m.clone()))
                .collect(),
            dynamic: vec![],
            bounds: Arc::new([]),
        }
    }

    fn served(planned: &Planned, names: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| {
                    let f = raw().schema();
                    f.field_with_name(n).unwrap().clone()
                })
                .collect::<Vec<_>>(),
        ));
        let metrics = ExecutionPlanMetricsSet::new();
        let baseline = BaselineMetrics::new(&metrics, 0);
        let scanned = Count::new();
        let out = secure(raw(), planned, &schema, None, &baseline, &scanned).unwrap();
        assert_eq!(scanned.value(), 3, "every raw row is counted as scanned");
        out
    }

    fn strings(batch: &RecordBatch, i: usize) -> Vec<Option<String>> {
        let a = batch
            .column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..a.len())
            .map(|r| a.is_valid(r).then(|| a.value(r).to_string()))
            .collect()
    }

    #[test]
    fn hidden_rows_are_dropped_on_raw_values_before_the_mask() {
        // The row predicate reads the raw name, which leaves masked.
        let only_li = Predicate::Cmp {
            left: Operand::Column("name".into()),
            op: CmpOp::Eq,
            right: Operand::Literal(Value::String("Li Na".into())),
        };
        let planned = barrier(Some(only_li), &[("name", Some(Mask::ShowFirst(1)))]);
        let out = served(&planned, &["name"]);
        assert_eq!(strings(&out, 0), vec![Some("L****".to_string())]);
    }

    #[test]
    fn only_served_columns_leave_and_no_rows_means_none() {
        let planned = barrier(None, &[("district", None)]);
        let out = served(&planned, &["district"]);
        assert_eq!(out.num_columns(), 1);
        assert_eq!(strings(&out, 0).len(), 3);
        let none = barrier(Some(Predicate::Const(false)), &[("district", None)]);
        assert_eq!(served(&none, &["district"]).num_rows(), 0);
    }

    #[test]
    fn rows_the_predicate_hides_leave_nothing_not_even_masked() {
        // Two of three salaries pass; the hidden row leaves no masked placeholder either.
        let planned = barrier(
            Some(Predicate::Cmp {
                left: Operand::Column("salary".into()),
                op: CmpOp::Gt,
                right: Operand::Literal(Value::Long(10_000)),
            }),
            &[("name", Some(Mask::Redact))],
        );
        let out = served(&planned, &["name"]);
        assert_eq!(
            strings(&out, 0),
            vec![Some("****".into()), Some("****".into())]
        );
    }
}
