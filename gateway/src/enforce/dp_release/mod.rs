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

mod exec;
mod spec;

pub(crate) use exec::plan;
pub use exec::DpReleaseExec;
use spec::*;
pub(crate) use spec::{DpSpec, Measure};

/// The prefix of the per-subject partial aggregates the release reads.
pub(crate) const DP_PREFIX: &str = "__lakegate_dp";

/// Field metadata on noisy columns: ε of that column's measurement.
pub const EPSILON_KEY: &str = "lakegate.epsilon";
/// Field metadata on noisy columns: the Laplace scale of its noise.
pub const SCALE_KEY: &str = "lakegate.noise_scale";

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
