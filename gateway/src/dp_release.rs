//! The differentially private release (`policy-model.md` §5): a plan node of its own directly
//! above the aggregate that groups or aggregates a column whose permit says `@epsilon`.
//!
//! The aggregate below it groups by the user's keys and the subject key, so that each of its
//! rows is one subject's contribution to one group. The release bounds every subject to
//! [`GROUPS_PER_SUBJECT`] group (chosen at random per run), clamps each subject's sum or mean to `@bounds`, adds OpenDP's
//! Laplace noise calibrated to those bounds, and releases groups by OpenDP's Laplace threshold
//! (never by exact counts). Like the minimum-group release it has no expressions, so nothing is
//! pushed below it: HAVING, outer filters and joins only see noisy, released groups.
//!
//! ```text
//! before:                                  after:
//!   Aggregate: groupBy=[diagnosis]           DpRelease: ε=1 (subjects: scale 1, threshold 15)
//!     aggr=[count(*)]                          Aggregate: groupBy=[diagnosis, __lakegate_subject]
//!     TableScan: health.visits                   TableScan: health.visits (+ __lakegate_subject)
//! ```

use std::any::Any;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, DFSchemaRef, TableReference};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::StreamExt;
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{make_laplace, make_laplace_threshold};
use opendp::measures::{Approximate, MaxDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance};
use policy::Epsilon;
use serde::{Deserialize, Serialize};

use crate::Suppressed;

/// The prefix of the per-subject partial aggregates the release reads.
pub(crate) const DP_PREFIX: &str = "__lakegate_dp";

/// How many groups one subject may contribute to (the others of its groups are dropped).
pub(crate) const GROUPS_PER_SUBJECT: u32 = 1;

/// The chance that a group of one subject is released by the threshold.
pub(crate) const DELTA: f64 = 1e-6;

/// Field metadata on noisy columns: ε of that column's measurement.
pub const EPSILON_KEY: &str = "lakegate.epsilon";
/// Field metadata on noisy columns: the Laplace scale of its noise.
pub const SCALE_KEY: &str = "lakegate.noise_scale";

/// What one output column after the keys releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Measure {
    /// `count(*)`: the subjects in the group.
    Subjects,
    /// `count(col)`: the subjects with a value; `count` names their per-subject count.
    NonNull { count: String },
    /// `sum(col)`: each subject's total clamped to `[lo, hi]`.
    Sum {
        sum: String,
        integer: bool,
        lo: f64,
        hi: f64,
    },
    /// `avg(col)`: the mean over subjects of each subject's mean clamped to `[lo, hi]`.
    Avg {
        sum: String,
        count: String,
        lo: f64,
        hi: f64,
    },
}

impl Measure {
    /// The type of the released column.
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Measure::Subjects | Measure::NonNull { .. } => DataType::Int64,
            Measure::Sum { integer: true, .. } => DataType::Int64,
            Measure::Sum { .. } | Measure::Avg { .. } => DataType::Float64,
        }
    }
}

/// Everything the release needs, as planned (the codec and `explain` show it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DpSpec {
    /// The table whose subjects are protected, for messages.
    pub(crate) table: String,
    /// The first `keys` input columns are the group keys.
    pub(crate) keys: usize,
    /// The input column holding the subject key.
    pub(crate) subject: String,
    /// One per output column after the keys.
    pub(crate) outputs: Vec<Measure>,
    /// What one run spends.
    pub(crate) epsilon: Epsilon,
    /// The smallest threshold, from `@min_group`.
    pub(crate) min_group: u64,
}

/// One noisy measurement: what it measures, its scale and the ε OpenDP's privacy map gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slot {
    pub(crate) scale: f64,
    pub(crate) epsilon: f64,
}

/// The calibrated mechanism: per output column its slot(s), the subjects' slot and threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Calibration {
    /// The subject count's slot (used by `count(*)` and the threshold), if measured.
    subjects: Option<Slot>,
    /// Per output column: its slots (two for `avg`; none for `count(*)`, which is `subjects`).
    outputs: Vec<Vec<Slot>>,
    /// Groups are released when their noisy subject count reaches this; None: no GROUP BY.
    threshold: Option<i64>,
    /// δ of the threshold, from OpenDP's privacy map.
    delta: f64,
}

fn dp_err(e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("differential privacy: {e}"))
}

/// The integer clamp of `[lo, hi]` for integer columns.
fn integer_bounds(lo: f64, hi: f64) -> Result<(i64, i64)> {
    let (l, h) = (lo.ceil() as i64, hi.floor() as i64);
    if l >= h {
        return Err(dp_err(format!(
            "@bounds(\"{lo},{hi}\") holds no two whole numbers for an integer column"
        )));
    }
    Ok((l, h))
}

/// The smallest scale from `sensitivity / epsilon` up whose ε by OpenDP's privacy map
/// (`spent(scale)`) is at most `epsilon`.
fn calibrated(sensitivity: f64, epsilon: f64, spent: impl Fn(f64) -> Result<f64>) -> Result<Slot> {
    let mut scale = sensitivity / epsilon;
    for _ in 0..64 {
        let e = spent(scale)?;
        if e <= epsilon {
            return Ok(Slot { scale, epsilon: e });
        }
        scale *= 1.0 + 1e-6_f64.max(e / epsilon - 1.0);
    }
    Err(dp_err("no Laplace scale meets the budget"))
}

/// Laplace noise on floats for a sum that one subject changes by at most `sensitivity`.
fn laplace_slot_f64(sensitivity: f64, epsilon: f64) -> Result<Slot> {
    calibrated(sensitivity, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            L1Distance::<f64>::default(),
            scale,
            None,
        )
        .and_then(|m| m.map(&sensitivity))
        .map_err(dp_err)
    })
}

/// Discrete Laplace noise on integers for a count or sum one subject changes by `sensitivity`.
fn laplace_slot_i64(sensitivity: i64, epsilon: f64) -> Result<Slot> {
    calibrated(sensitivity as f64, epsilon, |scale| {
        make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L1Distance::<i64>::default(),
            scale,
            None,
        )
        .and_then(|m| m.map(&sensitivity))
        .map_err(dp_err)
    })
}

/// OpenDP's Laplace threshold over (group index → subject count).
type ThresholdMeasurement = opendp::core::Measurement<
    MapDomain<AtomDomain<u64>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<u64, i64>,
>;

fn threshold_measurement(scale: f64, threshold: i64) -> Result<ThresholdMeasurement> {
    make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
        MapDomain::new(AtomDomain::<u64>::default(), AtomDomain::<i64>::default()),
        L0PInfDistance(AbsoluteDistance::<i64>::default()),
        scale,
        threshold,
        None,
    )
    .map_err(dp_err)
}

impl DpSpec {
    /// Splits ε evenly over the measurements and calibrates each with OpenDP's privacy maps.
    pub(crate) fn calibrate(&self) -> Result<Calibration> {
        let grouped = self.keys > 0;
        let measure_subjects = grouped || self.outputs.contains(&Measure::Subjects);
        let slots: usize = usize::from(measure_subjects)
            + self
                .outputs
                .iter()
                .map(|m| match m {
                    Measure::Subjects => 0,
                    Measure::NonNull { .. } | Measure::Sum { .. } => 1,
                    Measure::Avg { .. } => 2,
                })
                .sum::<usize>();
        if slots == 0 {
            return Err(dp_err("the release measures nothing"));
        }
        let share = self.epsilon.as_f64() / slots as f64;
        let g = GROUPS_PER_SUBJECT as i64;
        let mut threshold = None;
        let mut delta = 0.0;
        let subjects = if !measure_subjects {
            None
        } else if grouped {
            // Laplace threshold: ε and δ from OpenDP's map for a subject in `g` groups.
            let scale = g as f64 / share;
            let mut tau = (1.0 + scale * (1.0 / (2.0 * DELTA)).ln()).ceil() as i64;
            tau = tau.max(self.min_group as i64).max(1);
            let mut found = None;
            for _ in 0..200 {
                let m = threshold_measurement(scale, tau)?;
                let (e, d) = m.map(&(GROUPS_PER_SUBJECT, g, 1)).map_err(dp_err)?;
                if e <= share * (1.0 + 1e-9) && d <= DELTA {
                    found = Some((e, d));
                    break;
                }
                tau += (scale.ceil() as i64).max(1);
            }
            let (e, d) = found.ok_or_else(|| dp_err("no threshold meets δ"))?;
            threshold = Some(tau);
            delta = d;
            Some(Slot { scale, epsilon: e })
        } else {
            Some(laplace_slot_i64(g, share)?)
        };
        let outputs = self
            .outputs
            .iter()
            .map(|m| {
                Ok(match m {
                    Measure::Subjects => vec![],
                    Measure::NonNull { .. } => vec![laplace_slot_i64(g, share)?],
                    Measure::Sum {
                        integer: true,
                        lo,
                        hi,
                        ..
                    } => {
                        let (l, h) = integer_bounds(*lo, *hi)?;
                        vec![laplace_slot_i64(g * l.abs().max(h.abs()), share)?]
                    }
                    Measure::Sum { lo, hi, .. } => {
                        vec![laplace_slot_f64(g as f64 * lo.abs().max(hi.abs()), share)?]
                    }
                    Measure::Avg { lo, hi, .. } => vec![
                        laplace_slot_f64(g as f64 * lo.abs().max(hi.abs()), share)?,
                        laplace_slot_i64(g, share)?,
                    ],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Calibration {
            subjects,
            outputs,
            threshold,
            delta,
        })
    }

    /// The released schema's field for output `i` (after the keys), named as the user's
    /// aggregate, with what it spent and its noise in the metadata.
    pub(crate) fn output_field(&self, cal: &Calibration, i: usize, name: &str) -> Field {
        let m = &self.outputs[i];
        let slots: Vec<&Slot> = match m {
            Measure::Subjects => cal.subjects.iter().collect(),
            _ => cal.outputs[i].iter().collect(),
        };
        let eps: f64 = slots.iter().map(|s| s.epsilon).sum();
        let scales: Vec<String> = slots.iter().map(|s| format!("{}", s.scale)).collect();
        Field::new(name, m.data_type(), true).with_metadata(
            [
                (EPSILON_KEY.to_string(), format!("{eps}")),
                (SCALE_KEY.to_string(), scales.join(",")),
            ]
            .into(),
        )
    }
}

impl fmt::Display for DpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ε={} over {} subjects", self.epsilon, self.table)?;
        match self.calibrate() {
            Ok(c) => {
                if let Some(s) = &c.subjects {
                    write!(f, ", subjects: Laplace scale {}", s.scale)?;
                }
                if let Some(t) = c.threshold {
                    write!(
                        f,
                        ", groups released at noisy count >= {t} (δ={:e})",
                        c.delta
                    )?;
                }
                for (m, slots) in self.outputs.iter().zip(&c.outputs) {
                    let scales: Vec<String> = slots.iter().map(|s| s.scale.to_string()).collect();
                    match m {
                        Measure::Subjects => {}
                        Measure::NonNull { .. } => write!(f, ", count: scale {}", scales[0])?,
                        Measure::Sum { lo, hi, .. } => {
                            write!(f, ", sum clamped to [{lo}, {hi}]: scale {}", scales[0])?
                        }
                        Measure::Avg { lo, hi, .. } => write!(
                            f,
                            ", avg clamped to [{lo}, {hi}]: scales {}",
                            scales.join("/")
                        )?,
                    }
                }
                Ok(())
            }
            Err(e) => write!(f, " ({e})"),
        }
    }
}

/// The logical release node over the per-subject aggregate.
#[derive(Debug, Clone)]
pub(crate) struct DpRelease {
    input: LogicalPlan,
    spec: DpSpec,
    schema: DFSchemaRef,
    suppressed: Suppressed,
}

impl PartialEq for DpRelease {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.spec == other.spec && self.schema == other.schema
    }
}
// Specs hold finite numbers only.
impl Eq for DpRelease {}
impl Hash for DpRelease {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        serde_json::to_string(&self.spec)
            .unwrap_or_default()
            .hash(state);
    }
}
impl PartialOrd for DpRelease {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.input.partial_cmp(&other.input) {
            Some(Ordering::Equal) => serde_json::to_string(&self.spec)
                .ok()
                .partial_cmp(&serde_json::to_string(&other.spec).ok()),
            o => o,
        }
    }
}

impl DpRelease {
    /// The release over `input` (keys, subject, per-subject partials), output as `names` after
    /// the keys. Refuses what OpenDP cannot calibrate.
    pub(crate) fn try_new(
        input: LogicalPlan,
        spec: DpSpec,
        names: Vec<(Option<TableReference>, String)>,
        suppressed: Suppressed,
    ) -> Result<Self> {
        let cal = spec.calibrate()?;
        let in_schema = input.schema();
        let mut fields = Vec::new();
        for i in 0..spec.keys {
            let (q, f) = in_schema.qualified_field(i);
            fields.push((q.cloned(), f.clone()));
        }
        for (i, (q, name)) in names.into_iter().enumerate() {
            fields.push((q, Arc::new(spec.output_field(&cal, i, &name))));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(fields, HashMap::new())?);
        Ok(Self {
            input,
            spec,
            schema,
            suppressed,
        })
    }

    /// This node as a plan.
    pub(crate) fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The release node a plan node is, if it is one.
    pub(crate) fn of(plan: &LogicalPlan) -> Option<&DpRelease> {
        match plan {
            LogicalPlan::Extension(e) => {
                let any: &dyn Any = e.node.as_any();
                any.downcast_ref::<DpRelease>()
            }
            _ => None,
        }
    }

    /// What one run of this release spends.
    pub(crate) fn epsilon(&self) -> Epsilon {
        self.spec.epsilon
    }

    pub(crate) fn spec(&self) -> &DpSpec {
        &self.spec
    }
}

impl UserDefinedLogicalNodeCore for DpRelease {
    fn name(&self) -> &str {
        "DpRelease"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DpRelease: {}", self.spec)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("DpRelease has one input".into()))?;
        Ok(Self {
            input,
            spec: self.spec.clone(),
            schema: self.schema.clone(),
            suppressed: self.suppressed.clone(),
        })
    }
}

/// The physical release: collects the per-subject rows and releases noisy groups.
#[derive(Debug)]
pub struct DpReleaseExec {
    input: Arc<dyn ExecutionPlan>,
    spec: DpSpec,
    cal: Calibration,
    schema: SchemaRef,
    suppressed: Suppressed,
    /// Set by the first run: one spend of ε pays for one run.
    ran: Arc<AtomicBool>,
    properties: Arc<PlanProperties>,
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
struct Group {
    row: usize,
    subjects: i64,
    /// Per output: (numerator, denominator) — counts use the first, averages both.
    acc: Vec<(f64, i128, i64)>,
}

fn column(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("the release misses {name}")))?;
    Ok(cast(c, to)?)
}

/// The release of one collected input: bound, clamp, add noise, threshold.
fn release(
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
fn noisy_i64(exact: Vec<i64>, scale: f64) -> Result<Vec<i64>> {
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
fn noisy_f64(exact: Vec<f64>, scale: f64) -> Result<Vec<f64>> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
    .and_then(|m| m.invoke(&exact))
    .map_err(dp_err)
}

/// `lakegate_dp_noise(value, ε)`: how the audit trail's SQL shows a noisy value. Never run.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DisplayNoise {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for DisplayNoise {
    fn name(&self) -> &str {
        "lakegate_dp_noise"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Null))
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        Err(DataFusionError::Internal(
            "lakegate_dp_noise only shows a release".into(),
        ))
    }
}

/// The display-only noise function.
pub(crate) fn display_udf() -> Arc<datafusion::logical_expr::ScalarUDF> {
    Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
        DisplayNoise {
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Volatile,
            ),
        },
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(keys: usize, outputs: Vec<Measure>, eps: u64) -> DpSpec {
        DpSpec {
            table: "t".into(),
            keys,
            subject: "s".into(),
            outputs,
            epsilon: Epsilon(eps),
            min_group: 10,
        }
    }

    #[test]
    fn epsilon_is_split_and_opendp_agrees() {
        let s = spec(
            1,
            vec![
                Measure::Subjects,
                Measure::Sum {
                    sum: "x".into(),
                    integer: true,
                    lo: 0.0,
                    hi: 100.0,
                },
            ],
            1_000_000,
        );
        let c = s.calibrate().unwrap();
        let subj = c.subjects.as_ref().unwrap();
        assert!((subj.scale - 2.0).abs() < 1e-9, "{subj:?}");
        assert!(subj.epsilon <= 0.5 + 1e-9);
        assert!(c.outputs[1][0].scale >= 200.0 - 1e-9);
        assert!(c.outputs[1][0].epsilon <= 0.5);
        // δ at most 1e-6, and never below @min_group.
        assert!(c.delta <= DELTA && c.threshold.unwrap() >= 10);
    }

    #[test]
    fn integer_bounds_must_hold_two_whole_numbers() {
        assert!(integer_bounds(0.2, 0.8).is_err());
        assert_eq!(integer_bounds(-0.5, 10.5).unwrap(), (0, 10));
    }
}
