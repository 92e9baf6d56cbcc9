//! `array_agg` and `string_agg` held to `[execution] max_batch_bytes` while they accumulate.
//!
//! A list or string aggregate's state grows with every row of its group, and DataFusion sees it
//! only through the memory pool, which it under-counts (a `String` grows by doubling): one
//! `string_agg` of 10 KB values over 600,000 rows held 6 GB resident before the batch guard
//! refused its 1.3 GB output. The output is doomed as soon as the state passes what its output
//! batches may hold, so [`BoundedAggregate`] refuses there: one group's state past the limit, or
//! a grouped state past the limit times the number of output batches its groups need.
//! [`crate::bounded_functions`] puts it around those two functions.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, ReversedUDAF, Signature,
};

/// Rows of one output batch (DataFusion's default `batch_size`), for the grouped bound.
const GROUPS_PER_BATCH: usize = 8192;

/// Whether `f` builds a list or a string of its input.
pub(crate) fn builds_values(f: &AggregateUDF) -> bool {
    let any: &dyn std::any::Any = f.inner().as_ref();
    matches!(f.name(), "array_agg" | "string_agg") && !any.is::<BoundedAggregate>()
}

/// `inner`, whose state may not outgrow `limit` bytes per output batch.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct BoundedAggregate {
    inner: Arc<AggregateUDF>,
    limit: usize,
}

impl BoundedAggregate {
    /// Bounds `inner`.
    pub(crate) fn wrap(inner: Arc<AggregateUDF>, limit: usize) -> Arc<AggregateUDF> {
        Arc::new(AggregateUDF::new_from_impl(Self { inner, limit }))
    }

    fn rewrap(&self, inner: Arc<dyn AggregateUDFImpl>) -> Arc<dyn AggregateUDFImpl> {
        Arc::new(Self {
            inner: Arc::new(AggregateUDF::new_from_shared_impl(inner)),
            limit: self.limit,
        })
    }

    fn accumulator_of(&self, inner: Box<dyn Accumulator>) -> Box<dyn Accumulator> {
        Box::new(Checked {
            inner,
            name: self.inner.name().to_string(),
            limit: self.limit,
        })
    }
}

/// The refusal: the state already holds more than an output batch may.
fn too_large(name: &str, bytes: usize, limit: usize) -> datafusion::error::DataFusionError {
    crate::guard::too_large(&format!("{name}() per group"), bytes, limit)
}

impl AggregateUDFImpl for BoundedAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(
        &self,
        params: &datafusion::logical_expr::expr::AggregateFunctionParams,
    ) -> Result<String> {
        self.inner.inner().schema_name(params)
    }
    fn human_display(
        &self,
        params: &datafusion::logical_expr::expr::AggregateFunctionParams,
    ) -> Result<String> {
        self.inner.inner().human_display(params)
    }
    fn window_function_schema_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> Result<String> {
        self.inner.inner().window_function_schema_name(params)
    }
    fn display_name(
        &self,
        params: &datafusion::logical_expr::expr::AggregateFunctionParams,
    ) -> Result<String> {
        self.inner.inner().display_name(params)
    }
    fn window_function_display_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> Result<String> {
        self.inner.inner().window_function_display_name(params)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.inner().return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(self.accumulator_of(self.inner.inner().accumulator(acc_args)?))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.inner().state_fields(args)
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.inner().groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(CheckedGroups {
            inner: self.inner.inner().create_groups_accumulator(args)?,
            name: self.inner.name().to_string(),
            limit: self.limit,
        }))
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(self.accumulator_of(self.inner.inner().create_sliding_accumulator(args)?))
    }
    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        Ok(Arc::clone(self.inner.inner())
            .with_beneficial_ordering(beneficial_ordering)?
            .map(|inner| self.rewrap(inner)))
    }
    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }
    fn simplify(
        &self,
    ) -> Option<datafusion::logical_expr::function::AggregateFunctionSimplification> {
        self.inner.inner().simplify()
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.inner().reverse_expr() {
            ReversedUDAF::Reversed(r) => ReversedUDAF::Reversed(Self::wrap(r, self.limit)),
            other => other,
        }
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }
    fn is_descending(&self) -> Option<bool> {
        self.inner.inner().is_descending()
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.inner().default_value(data_type)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }
    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.inner().documentation()
    }
}

/// One group's accumulator, refused past the limit.
#[derive(Debug)]
struct Checked {
    inner: Box<dyn Accumulator>,
    name: String,
    limit: usize,
}

impl Checked {
    fn check(&self) -> Result<()> {
        let size = self.inner.size();
        if size > self.limit {
            return Err(too_large(&self.name, size, self.limit));
        }
        Ok(())
    }
}

impl Accumulator for Checked {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(values)?;
        self.check()
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.inner.evaluate()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)?;
        self.check()
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }
    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

/// A grouped accumulator, refused once its state cannot fit the output batches its groups need.
struct CheckedGroups {
    inner: Box<dyn GroupsAccumulator>,
    name: String,
    limit: usize,
}

impl CheckedGroups {
    fn check(&self, total_num_groups: usize) -> Result<()> {
        let size = self.inner.size();
        let batches = total_num_groups.div_ceil(GROUPS_PER_BATCH).max(1);
        if size > self.limit.saturating_mul(batches) {
            return Err(too_large(&self.name, size / batches, self.limit));
        }
        Ok(())
    }
}

impl GroupsAccumulator for CheckedGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)?;
        self.check(total_num_groups)
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.inner.evaluate(emit_to)
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .merge_batch(values, group_indices, total_num_groups)?;
        self.check(total_num_groups)
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
}
