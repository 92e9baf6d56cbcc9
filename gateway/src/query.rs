//! A planned query: its served schema, its parameters, and its execution.

use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{execute_stream, SendableRecordBatchStream};
use futures::StreamExt;

use crate::GatewayError;

/// One planned read statement for one principal.
#[derive(Clone)]
pub struct Query {
    state: Arc<SessionState>,
    plan: LogicalPlan,
    schema: SchemaRef,
    parameters: SchemaRef,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("schema", &self.schema)
            .field("parameters", &self.parameters)
            .finish()
    }
}

impl Query {
    pub(crate) fn new(state: Arc<SessionState>, plan: LogicalPlan) -> Result<Self, GatewayError> {
        let schema = served_schema(plan.schema().inner());
        let parameters = parameter_schema(&plan)?;
        Ok(Self {
            state,
            plan,
            schema,
            parameters,
        })
    }

    /// The schema of the result as it is sent: exactly the schema of every batch
    /// [`Query::execute`] yields.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One field per placeholder, `$1` first. A type DataFusion could not infer is `Null`.
    pub fn parameter_schema(&self) -> SchemaRef {
        self.parameters.clone()
    }

    /// The logical plan (after policy rewriting).
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// This query with `values` bound to its placeholders in order.
    pub fn bind(&self, values: Vec<ScalarValue>) -> Result<Query, GatewayError> {
        let expected = self.parameters.fields().len();
        if values.len() != expected {
            return Err(GatewayError::Parameters(format!(
                "the statement has {expected} parameter(s) but {} value(s) were bound",
                values.len()
            )));
        }
        // Cast each value to the type the plan inferred, so that `?` compared with an Int64
        // column accepts an Int32 from the client.
        let mut cast_values = Vec::with_capacity(values.len());
        for (v, f) in values.into_iter().zip(self.parameters.fields()) {
            let t = f.data_type();
            if *t == DataType::Null || v.data_type() == *t {
                cast_values.push(v);
            } else {
                cast_values.push(v.cast_to(t).map_err(|e| {
                    GatewayError::Parameters(format!(
                        "parameter {}: cannot use the value as {t}: {}",
                        f.name(),
                        e.strip_backtrace()
                    ))
                })?);
            }
        }
        let plan = self
            .plan
            .clone()
            .with_param_values(ParamValues::List(
                cast_values.into_iter().map(Into::into).collect(),
            ))
            .map_err(|e| GatewayError::Parameters(e.strip_backtrace()))?;
        Query::new(self.state.clone(), plan)
    }

    /// The physical plan (for serialization to executors; [`Query::execute`] plans its own).
    pub async fn physical_plan(
        &self,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, GatewayError> {
        self.state
            .create_physical_plan(&self.plan)
            .await
            .map_err(GatewayError::from_planning)
    }

    /// The task context plans of this query run in.
    pub fn task_context(&self) -> Arc<datafusion::execution::TaskContext> {
        self.state.task_ctx()
    }

    /// Runs the query. Every batch of the stream has exactly [`Query::schema`].
    pub async fn execute(&self) -> Result<SendableRecordBatchStream, GatewayError> {
        if !self.parameters.fields().is_empty() {
            return Err(GatewayError::Parameters(format!(
                "the statement has {} unbound parameter(s): bind values before executing",
                self.parameters.fields().len()
            )));
        }
        let physical = self
            .state
            .create_physical_plan(&self.plan)
            .await
            .map_err(GatewayError::from_planning)?;
        let stream =
            execute_stream(physical, self.state.task_ctx()).map_err(GatewayError::Execution)?;
        let schema = self.schema.clone();
        let conformed = stream.map(move |batch| batch.and_then(|b| conform(b, &schema)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            conformed,
        )))
    }
}

/// The schema as sent to clients: view types become their plain forms, which every Flight SQL
/// client reads.
pub fn served_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Utf8View => DataType::Utf8,
                DataType::BinaryView => DataType::Binary,
                other => other.clone(),
            };
            Field::new(f.name(), t, true).with_metadata(f.metadata().clone())
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Casts a batch to the served schema (types and field names).
fn conform(batch: RecordBatch, schema: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)
}

fn parameter_schema(plan: &LogicalPlan) -> Result<SchemaRef, GatewayError> {
    let fields = plan
        .get_parameter_fields()
        .map_err(|e| GatewayError::Parameters(e.strip_backtrace()))?;
    let mut numbered = Vec::with_capacity(fields.len());
    for (name, field) in fields {
        let n: usize = name
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                GatewayError::Parameters(format!(
                    "placeholder `{name}` is not positional: write `?` or `$1`, `$2`, ..."
                ))
            })?;
        numbered.push((n, name, field));
    }
    numbered.sort_by_key(|(n, _, _)| *n);
    for (i, (n, _, _)) in numbered.iter().enumerate() {
        if *n != i + 1 {
            return Err(GatewayError::Parameters(format!(
                "placeholder ${} is missing: number placeholders $1, $2, ... without gaps",
                i + 1
            )));
        }
    }
    Ok(Arc::new(Schema::new(
        numbered
            .into_iter()
            .map(|(_, name, field)| {
                let t = field
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Null);
                Field::new(name, t, true)
            })
            .collect::<Vec<_>>(),
    )))
}
