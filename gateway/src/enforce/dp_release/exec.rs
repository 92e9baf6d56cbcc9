//! [`DpReleaseExec`]: the physical release — bounds each subject's contribution, adds noise and
//! releases groups by the noisy threshold.

use super::*;

/// The physical release: collects the per-subject rows and releases noisy groups.
#[derive(Debug)]
pub struct DpReleaseExec {
    pub(super) input: Arc<dyn ExecutionPlan>,
    pub(super) spec: DpSpec,
    pub(super) cal: Calibration,
    pub(super) schema: SchemaRef,
    pub(super) suppressed: Suppressed,
    /// Set by the first run: one spend of ε pays for one run.
    pub(super) ran: Arc<AtomicBool>,
    pub(super) properties: Arc<PlanProperties>,
}

impl DpReleaseExec {
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: DpSpec,
        schema: SchemaRef,
        suppressed: Suppressed,
        ran: Arc<AtomicBool>,
    ) -> Result<Self> {
        let cal = spec.calibrate()?;
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            datafusion::physical_plan::execution_plan::EmissionType::Final,
            input.boundedness(),
        ));
        Ok(Self {
            input,
            spec,
            cal,
            schema,
            suppressed,
            ran,
            properties,
        })
    }

    /// What one run spends.
    pub fn epsilon(&self) -> Epsilon {
        self.spec.epsilon
    }
}

impl DisplayAs for DpReleaseExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DpReleaseExec: {}", self.spec)
    }
}

impl ExecutionPlan for DpReleaseExec {
    fn name(&self) -> &str {
        "DpReleaseExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        // A subject's rows for every group must meet to bound its groups.
        vec![Distribution::SinglePartition]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("DpReleaseExec has one child".into()))?;
        Ok(Arc::new(Self::try_new(
            input,
            self.spec.clone(),
            self.schema.clone(),
            self.suppressed.clone(),
            self.ran.clone(),
        )?))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(
                "DpReleaseExec has one partition".into(),
            ));
        }
        if self.ran.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // Fresh noise for a second run would spend ε that was not charged.
            return Err(DataFusionError::Execution(
                "a differentially private release runs once per query execution".into(),
            ));
        }
        let mut input = self.input.execute(0, context.clone())?;
        let (spec, cal, schema, suppressed) = (
            self.spec.clone(),
            self.cal.clone(),
            self.schema.clone(),
            self.suppressed.clone(),
        );
        let out_schema = schema.clone();
        let stream = futures::stream::once(async move {
            let reservation = MemoryConsumer::new("DpReleaseExec").register(context.memory_pool());
            let in_schema = input.schema();
            let mut batches = Vec::new();
            while let Some(b) = input.next().await {
                let b = b?;
                reservation.try_grow(b.get_array_memory_size())?;
                batches.push(b);
            }
            let all = concat_batches(&in_schema, &batches)?;
            drop(batches);
            let out = release(&all, &spec, &cal, &schema, &suppressed);
            drop(reservation);
            out
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// Per group: a row of its keys, its subjects and each output's exact accumulators.
pub(super) struct Group {
    pub(super) row: usize,
    pub(super) subjects: i64,
    /// Per output: (numerator, denominator) — counts use the first, averages both.
    pub(super) acc: Vec<(f64, i128, i64)>,
}

pub(super) fn column(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("the release misses {name}")))?;
    Ok(cast(c, to)?)
}

/// The release of one collected input: bound, clamp, add noise, threshold.
pub(super) fn release(
    all: &RecordBatch,
    spec: &DpSpec,
    cal: &Calibration,
    schema: &SchemaRef,
    suppressed: &Suppressed,
) -> Result<RecordBatch> {
    let n = all.num_rows();
    let key_cols: Vec<ArrayRef> = (0..spec.keys).map(|i| all.column(i).clone()).collect();
    let subject = all
        .column_by_name(&spec.subject)
        .ok_or_else(|| DataFusionError::Internal("the release misses the subject".into()))?
        .clone();
    let key_rows = if spec.keys > 0 {
        let conv = RowConverter::new(
            key_cols
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        Some(conv.convert_columns(&key_cols)?)
    } else {
        None
    };
    let subj_conv = RowConverter::new(vec![SortField::new(subject.data_type().clone())])?;
    let subj_rows = subj_conv.convert_columns(&[subject])?;
    let key_of = |i: usize| -> &[u8] { key_rows.as_ref().map_or(&[][..], |r| r.row(i).data()) };

    // Each subject keeps one of its groups, chosen at random per run (by a hash of a fresh
    // random salt, the subject and the key): a function of its own data only.
    let salt = uuid::Uuid::new_v4();
    let rank = |i: usize| -> [u8; 8] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(salt.as_bytes());
        h.update(subj_rows.row(i).data());
        h.update([0xff]);
        h.update(key_of(i));
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    };
    let mut chosen: HashMap<&[u8], (usize, [u8; 8])> = HashMap::new();
    for i in 0..n {
        let r = rank(i);
        chosen
            .entry(subj_rows.row(i).data())
            .and_modify(|(j, rj)| {
                if r < *rj {
                    (*j, *rj) = (i, r)
                }
            })
            .or_insert((i, r));
    }
    // Each output's per-subject inputs, cast once.
    let inputs: Vec<(Option<ArrayRef>, Option<ArrayRef>)> = spec
        .outputs
        .iter()
        .map(|m| {
            Ok(match m {
                Measure::Subjects => (None, None),
                Measure::NonNull { count } => (None, Some(column(all, count, &DataType::Int64)?)),
                Measure::Sum { sum, integer, .. } => {
                    let t = if *integer {
                        DataType::Int64
                    } else {
                        DataType::Float64
                    };
                    (Some(column(all, sum, &t)?), None)
                }
                Measure::Avg { sum, count, .. } => (
                    Some(column(all, sum, &DataType::Float64)?),
                    Some(column(all, count, &DataType::Int64)?),
                ),
            })
        })
        .collect::<Result<_>>()?;
    let mut groups: HashMap<&[u8], Group> = HashMap::new();
    if spec.keys == 0 {
        groups.insert(
            &[],
            Group {
                row: 0,
                subjects: 0,
                acc: vec![(0.0, 0, 0); spec.outputs.len()],
            },
        );
    }
    let mut rows: Vec<usize> = chosen.into_values().map(|(i, _)| i).collect();
    rows.sort_unstable();
    for i in rows {
        let g = groups.entry(key_of(i)).or_insert_with(|| Group {
            row: i,
            subjects: 0,
            acc: vec![(0.0, 0, 0); spec.outputs.len()],
        });
        g.subjects += 1;
        for (o, m) in spec.outputs.iter().enumerate() {
            let (a, b) = &inputs[o];
            let acc = &mut g.acc[o];
            match m {
                Measure::Subjects => {}
                Measure::NonNull { .. } => {
                    let c = b
                        .as_ref()
                        .expect("count")
                        .as_any()
                        .downcast_ref::<Int64Array>();
                    if c.is_some_and(|c| c.is_valid(i) && c.value(i) > 0) {
                        acc.2 += 1;
                    }
                }
                Measure::Sum {
                    integer: true,
                    lo,
                    hi,
                    ..
                } => {
                    let (l, h) = integer_bounds(*lo, *hi)?;
                    let s = a
                        .as_ref()
                        .expect("sum")
                        .as_any()
                        .downcast_ref::<Int64Array>();
                    if let Some(s) = s.filter(|s| s.is_valid(i)) {
                        acc.1 += s.value(i).clamp(l, h) as i128;
                    }
                }
                Measure::Sum { lo, hi, .. } => {
                    let s = a
                        .as_ref()
                        .expect("sum")
                        .as_any()
                        .downcast_ref::<Float64Array>();
                    if let Some(s) = s.filter(|s| s.is_valid(i) && !s.value(i).is_nan()) {
                        acc.0 += s.value(i).clamp(*lo, *hi);
                    }
                }
                Measure::Avg { lo, hi, .. } => {
                    let s = a
                        .as_ref()
                        .expect("sum")
                        .as_any()
                        .downcast_ref::<Float64Array>();
                    let c = b
                        .as_ref()
                        .expect("count")
                        .as_any()
                        .downcast_ref::<Int64Array>();
                    if let (Some(s), Some(c)) = (s, c) {
                        if s.is_valid(i) && c.is_valid(i) && c.value(i) > 0 {
                            let mean = s.value(i) / c.value(i) as f64;
                            if !mean.is_nan() {
                                acc.0 += mean.clamp(*lo, *hi);
                                acc.2 += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    // Which groups are released, with their noisy subject counts.
    let mut ordered: Vec<(&[u8], Group)> = groups.into_iter().collect();
    ordered.sort_by(|a, b| a.0.cmp(b.0));
    let total = ordered.len();
    let noisy_subjects: Vec<i64>;
    let released: Vec<Group>;
    match (cal.threshold, &cal.subjects) {
        (Some(tau), Some(slot)) => {
            let m = threshold_measurement(slot.scale, tau)?;
            let exact: HashMap<u64, i64> = ordered
                .iter()
                .enumerate()
                .map(|(i, (_, g))| (i as u64, g.subjects))
                .collect();
            let kept = m.invoke(&exact).map_err(dp_err)?;
            let mut keep: Vec<(usize, i64)> =
                kept.into_iter().map(|(i, v)| (i as usize, v)).collect();
            keep.sort_unstable();
            let mut it = ordered.into_iter().enumerate();
            let mut out = Vec::new();
            let mut counts = Vec::new();
            for (i, v) in keep {
                for (j, (_, g)) in it.by_ref() {
                    if j == i {
                        out.push(g);
                        counts.push(v);
                        break;
                    }
                }
            }
            released = out;
            noisy_subjects = counts;
        }
        (None, slot) => {
            released = ordered.into_iter().map(|(_, g)| g).collect();
            noisy_subjects = match slot {
                Some(s) => noisy_i64(released.iter().map(|g| g.subjects).collect(), s.scale)?,
                None => vec![0; released.len()],
            };
        }
        (Some(_), None) => {
            return Err(DataFusionError::Internal(
                "a threshold without counts".into(),
            ))
        }
    }
    suppressed.add((total - released.len()) as u64);

    let mut columns: Vec<ArrayRef> = Vec::new();
    let idx = UInt32Array::from(released.iter().map(|g| g.row as u32).collect::<Vec<_>>());
    for k in &key_cols {
        columns.push(take(k.as_ref(), &idx, None)?);
    }
    for (o, m) in spec.outputs.iter().enumerate() {
        let slots = &cal.outputs[o];
        let col: ArrayRef = match m {
            Measure::Subjects => Arc::new(Int64Array::from(
                noisy_subjects
                    .iter()
                    .map(|v| (*v).max(0))
                    .collect::<Vec<_>>(),
            )),
            Measure::NonNull { .. } => {
                let exact = released.iter().map(|g| g.acc[o].2).collect();
                let noisy = noisy_i64(exact, slots[0].scale)?;
                Arc::new(Int64Array::from(
                    noisy.into_iter().map(|v| v.max(0)).collect::<Vec<_>>(),
                ))
            }
            Measure::Sum { integer: true, .. } => {
                let exact = released
                    .iter()
                    .map(|g| g.acc[o].1.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
                    .collect();
                Arc::new(Int64Array::from(noisy_i64(exact, slots[0].scale)?))
            }
            Measure::Sum { .. } => {
                let exact = released.iter().map(|g| g.acc[o].0).collect();
                Arc::new(Float64Array::from(noisy_f64(exact, slots[0].scale)?))
            }
            Measure::Avg { lo, hi, .. } => {
                let num = noisy_f64(
                    released.iter().map(|g| g.acc[o].0).collect(),
                    slots[0].scale,
                )?;
                let den = noisy_i64(
                    released.iter().map(|g| g.acc[o].2).collect(),
                    slots[1].scale,
                )?;
                Arc::new(Float64Array::from(
                    num.iter()
                        .zip(&den)
                        .map(|(s, c)| (s / (*c).max(1) as f64).clamp(*lo, *hi))
                        .collect::<Vec<_>>(),
                ))
            }
        };
        columns.push(col);
    }
    let _ = schema.fields().len();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `exact` with OpenDP's discrete Laplace noise of `scale` on each value.
pub(super) fn noisy_i64(exact: Vec<i64>, scale: f64) -> Result<Vec<i64>> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<i64>::default(),
        scale,
        None,
    )
    .and_then(|m| m.invoke(&exact))
    .map_err(dp_err)
}

/// `exact` with OpenDP's (discretized, floating-point safe) Laplace noise of `scale`.
pub(super) fn noisy_f64(exact: Vec<f64>, scale: f64) -> Result<Vec<f64>> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
    .and_then(|m| m.invoke(&exact))
    .map_err(dp_err)
}

/// The Arrow schema of a logical release.
pub(crate) fn exec_schema(node: &DpRelease) -> SchemaRef {
    Arc::new(Schema::new(
        node.schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect::<Vec<_>>(),
    ))
}

/// Plans [`DpRelease`] as [`DpReleaseExec`] (called by the release planner).
pub(crate) fn plan(
    node: &DpRelease,
    input: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(DpReleaseExec::try_new(
        input,
        node.spec.clone(),
        exec_schema(node),
        node.suppressed.clone(),
        Arc::new(AtomicBool::new(false)),
    )?))
}
