//! Batch calls (`policy-model.md` §7): a product whose parameter is a list
//! (`"list<string>"`) answers about each of its values in one call.
//!
//! ```text
//! -- products/verify_identity.toml, [review] batch_key = "id_number", max_rows = 1
//! SELECT k.id_number, (p.name IS NOT NULL AND p.name = k.name) AS matched
//! FROM (SELECT unnest($id_number) AS id_number, unnest($name) AS name) k
//! LEFT JOIN civil.persons p ON p.id_number = k.id_number
//!
//! SELECT * FROM verify_identity(?, ?)      -- two lists of 10,000 values each, bound by ADBC
//! ```
//!
//! What the gateway holds a batch call to, whatever the product's SQL does:
//! - every list argument holds 1 to `[review] max_batch` values, none NULL, all lists alike
//!   in length; the call is counted (quota, usage) once per value;
//! - every output row's `batch_key` column holds one of the values the caller sent, and no
//!   value has more than `max_rows` rows: a batch answers about the caller's subjects only,
//!   never lists others. A call that breaks either releases nothing.

use std::collections::{HashMap, HashSet};

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::sql::sqlparser::ast::{self, Statement};
use lake_config::products::{Param, ProductFile};

use crate::GatewayError;

/// The Arrow type a parameter is bound as: its kind's, or a list of it.
pub(crate) fn param_type(p: &Param) -> DataType {
    let one = super::arrow_type(p.ty);
    if p.list {
        DataType::List(std::sync::Arc::new(Field::new_list_field(one, true)))
    } else {
        one
    }
}

/// The list parameters of `file`, each `$name` with its SQL type (`BIGINT[]`): what planning
/// its SQL types.
pub(crate) fn typed_lists(file: &ProductFile) -> Vec<(String, String)> {
    file.params
        .iter()
        .filter(|p| p.list)
        .map(|p| (format!("${}", p.name), format!("{}[]", sql_type(p.ty))))
        .collect()
}

/// The SQL type a parameter's values are planned as.
fn sql_type(ty: lake_config::products::ParamType) -> &'static str {
    use lake_config::products::ParamType as P;
    match ty {
        P::String => "VARCHAR",
        P::Int => "BIGINT",
        P::Decimal => "DECIMAL(38, 10)",
        P::Date => "DATE",
        P::Timestamp => "TIMESTAMP WITH TIME ZONE",
        P::Bool => "BOOLEAN",
    }
}

/// Gives each placeholder named in `typed` its SQL type, as `CAST($ids AS BIGINT[])`:
/// DataFusion plans a named placeholder untyped, and `unnest` of an untyped value fails. (A
/// cast, not `arrow_cast()`: a function's constant result is held to what a batch may repeat,
/// and the list is not repeated.)
pub(crate) fn type_placeholders(
    statement: &mut datafusion::sql::parser::Statement,
    typed: &[(String, String)],
) -> Result<(), GatewayError> {
    use datafusion::sql::parser::Statement as Parsed;
    if typed.is_empty() {
        return Ok(());
    }
    // A product's SQL is one query (EXPLAIN and the like are refused when it plans).
    let Parsed::Statement(statement) = statement else {
        return Ok(());
    };
    let statement: &mut Statement = statement.as_mut();
    let mut casts = HashMap::new();
    for (name, ty) in typed {
        let text = format!("CAST({name} AS {ty})");
        let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
        let expr = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| GatewayError::Config(format!("cannot type {name} as {ty}: {e}")))?;
        casts.insert(name.clone(), expr);
    }
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Value(v) = expr {
            if let ast::Value::Placeholder(name) = &v.value {
                if let Some(cast) = casts.get(name) {
                    *expr = cast.clone();
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// A bound batch call: how many values it asks about, and which.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Values per list (the calls it counts).
    pub(crate) values: u64,
    /// The output column of the key.
    pub(crate) column: usize,
    /// The key list's values, as text.
    pub(crate) keys: HashSet<String>,
    /// The key list's value type: output keys are compared as it (`9648.58` as a decimal
    /// of the list's scale).
    pub(crate) key_type: DataType,
    /// Output rows one value may have.
    pub(crate) max_rows: u64,
}

/// Checks the bound list arguments of a call of `file` (`values` by parameter name) and
/// returns the batch it makes; `None` for a product without lists.
pub(crate) fn bound_batch(
    file: &ProductFile,
    output: &datafusion::arrow::datatypes::Schema,
    values: &HashMap<String, ScalarValue>,
) -> Result<Option<Batch>> {
    let Some(key) = &file.batch_key else {
        return Ok(None);
    };
    let name = &file.name;
    let mut length: Option<(u64, &str)> = None;
    let mut keys = HashSet::new();
    let mut key_type = DataType::Null;
    for p in file.params.iter().filter(|p| p.list) {
        let array = match values.get(&p.name) {
            Some(ScalarValue::List(a)) => a.value(0),
            Some(ScalarValue::Null) | None => {
                return Err(DataFusionError::Plan(format!(
                    "data product {name}: argument {} must be a list of values, not NULL",
                    p.name
                )))
            }
            Some(other) => {
                return Err(DataFusionError::Plan(format!(
                    "data product {name}: argument {} must be {}, not {}",
                    p.name,
                    super::call::a_word(&p.type_word()),
                    other.data_type()
                )))
            }
        };
        let n = array.len() as u64;
        if n == 0 || n > file.max_batch {
            return Err(DataFusionError::Plan(format!(
                "data product {name}: argument {} holds {n} values; a call takes 1 to {} \
                 ([review] max_batch)",
                p.name, file.max_batch
            )));
        }
        if array.null_count() > 0 {
            return Err(DataFusionError::Plan(format!(
                "data product {name}: argument {} holds NULL values; every value must be one",
                p.name
            )));
        }
        match length {
            Some((m, other)) if m != n => {
                return Err(DataFusionError::Plan(format!(
                    "data product {name}: arguments {other} ({m} values) and {} ({n} values) \
                     must be lists of the same length",
                    p.name
                )))
            }
            _ => length = Some((n, &p.name)),
        }
        if p.name == *key {
            keys = texts(&array)?.into_iter().collect();
            key_type = array.data_type().clone();
        }
    }
    let column = output.index_of(key).map_err(|_| {
        DataFusionError::Internal(format!("data product {name} has no output column {key}"))
    })?;
    Ok(Some(Batch {
        values: length.map_or(0, |(n, _)| n),
        column,
        keys,
        key_type,
        max_rows: file.max_rows,
    }))
}

/// Each value of `array` as text (the same text for the same value of any type).
fn texts(array: &ArrayRef) -> Result<Vec<String>> {
    let text = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
    let text = text
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .ok_or_else(|| DataFusionError::Internal("cast to Utf8 is not a string array".into()))?;
    Ok((0..text.len())
        .map(|i| {
            if text.is_null(i) {
                String::new()
            } else {
                text.value(i).to_string()
            }
        })
        .collect())
}

impl Batch {
    /// Counts `batch`'s rows per key, refusing a row whose key the caller did not send (or is
    /// NULL), or a key past its `max_rows`. `seen` carries the counts across batches.
    pub(crate) fn check(
        &self,
        product: &str,
        batch: &RecordBatch,
        seen: &mut HashMap<String, u64>,
    ) -> Result<()> {
        let column = datafusion::arrow::compute::cast(batch.column(self.column), &self.key_type)
            .map_err(|_| {
                DataFusionError::Execution(format!(
                    "data product {product}'s batch key cannot be compared with the values \
                     sent; nothing of the call is released"
                ))
            })?;
        let column = &column;
        let keys = texts(column)?;
        for (i, key) in keys.into_iter().enumerate() {
            if column.is_null(i) || !self.keys.contains(&key) {
                return Err(DataFusionError::Execution(format!(
                    "data product {product} answered about a value the call did not ask \
                     about; nothing of the call is released"
                )));
            }
            let n = seen.entry(key).or_default();
            *n += 1;
            if *n > self.max_rows {
                return Err(DataFusionError::Execution(format!(
                    "data product {product} returned more than its [review] max_rows = {} \
                     rows for one value of the batch; nothing of the call is released",
                    self.max_rows
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::Schema;
    use std::sync::Arc;

    fn file(max_rows: u64) -> ProductFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verify.toml");
        std::fs::write(
            &path,
            format!(
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nid = \"list<int>\"\n\
                 name = \"list<string>\"\n[review]\nbatch_key = \"id\"\nmax_rows = {max_rows}\n\
                 max_batch = 3\n"
            ),
        )
        .unwrap();
        lake_config::products::read_product(&path).unwrap()
    }

    fn list(values: ArrayRef) -> ScalarValue {
        ScalarValue::List(Arc::new(
            datafusion::common::utils::SingleRowListArrayBuilder::new(values).build_list_array(),
        ))
    }

    fn output() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("matched", DataType::Utf8, true),
        ])
    }

    fn args(ids: Vec<i64>, names: Vec<&str>) -> HashMap<String, ScalarValue> {
        HashMap::from([
            ("id".into(), list(Arc::new(Int64Array::from(ids)))),
            ("name".into(), list(Arc::new(StringArray::from(names)))),
        ])
    }

    #[tokio::test]
    async fn a_typed_list_placeholder_plans_binds_and_unnests() {
        use datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        let state = ctx.state();
        let mut statement = state
            .sql_to_statement(
                "SELECT unnest($ids) AS id",
                &datafusion::config::Dialect::Generic,
            )
            .unwrap();
        type_placeholders(&mut statement, &[("$ids".into(), "BIGINT[]".into())]).unwrap();
        let plan = state.statement_to_plan(statement).await.unwrap();
        let values = HashMap::from([(
            "ids".to_string(),
            list(Arc::new(Int64Array::from(vec![3, 1, 2]))),
        )]);
        let bound = plan
            .with_param_values(datafusion::common::ParamValues::from(values))
            .unwrap();
        let batches = ctx
            .execute_logical_plan(bound)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| 3  |") && text.contains("| 2  |"), "{text}");
        // Every parameter type's list plans.
        for word in ["string", "int", "decimal", "date", "timestamp", "bool"] {
            let ty = lake_config::products::ParamType::parse(word).unwrap();
            let mut statement = state
                .sql_to_statement(
                    "SELECT unnest($v) AS v",
                    &datafusion::config::Dialect::Generic,
                )
                .unwrap();
            type_placeholders(
                &mut statement,
                &[("$v".into(), format!("{}[]", sql_type(ty)))],
            )
            .unwrap();
            state
                .statement_to_plan(statement)
                .await
                .unwrap_or_else(|e| panic!("{word}: {e}"));
        }
    }

    #[test]
    fn list_arguments_are_bounded_alike_and_without_nulls() {
        let f = file(1);
        let ok = bound_batch(&f, &output(), &args(vec![1, 2], vec!["a", "b"]))
            .unwrap()
            .unwrap();
        assert_eq!(ok.values, 2);
        assert_eq!(ok.column, 0);
        for (ids, names, says) in [
            (vec![], vec![], "holds 0 values"),
            (vec![1, 2, 3, 4], vec!["a", "b", "c", "d"], "1 to 3"),
            (vec![1, 2], vec!["a"], "same length"),
        ] {
            let err = bound_batch(&f, &output(), &args(ids, names)).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let mut with_null = args(vec![1], vec!["a"]);
        with_null.insert(
            "id".into(),
            list(Arc::new(Int64Array::from(vec![None::<i64>]))),
        );
        let err = bound_batch(&f, &output(), &with_null).unwrap_err();
        assert!(err.to_string().contains("NULL values"), "{err}");
        let mut null_list = args(vec![1], vec!["a"]);
        null_list.insert("id".into(), ScalarValue::Null);
        let err = bound_batch(&f, &output(), &null_list).unwrap_err();
        assert!(err.to_string().contains("not NULL"), "{err}");
    }

    #[test]
    fn keys_are_compared_as_the_values_sent_whatever_the_output_type() {
        use datafusion::arrow::array::Decimal128Array;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("by_cost.toml");
        std::fs::write(
            &path,
            "description = \"x\"\nsql = \"SELECT 1\"\n[params]\ncost = \"list<decimal>\"\n\
             [review]\nbatch_key = \"cost\"\nmax_rows = 1\n",
        )
        .unwrap();
        let f = lake_config::products::read_product(&path).unwrap();
        let sent = Decimal128Array::from(vec![96_485_800_000_000i128])
            .with_precision_and_scale(38, 10)
            .unwrap();
        let output = Schema::new(vec![Field::new("cost", DataType::Decimal128(10, 2), true)]);
        let batch = bound_batch(
            &f,
            &output,
            &HashMap::from([("cost".to_string(), list(Arc::new(sent)))]),
        )
        .unwrap()
        .unwrap();
        let answered = Decimal128Array::from(vec![964_858i128])
            .with_precision_and_scale(10, 2)
            .unwrap();
        let rows = RecordBatch::try_new(Arc::new(output), vec![Arc::new(answered)]).unwrap();
        batch.check("by_cost", &rows, &mut HashMap::new()).unwrap();
    }

    #[test]
    fn output_rows_answer_only_about_the_values_sent_each_within_max_rows() {
        let f = file(1);
        let batch = bound_batch(&f, &output(), &args(vec![1, 2], vec!["a", "b"]))
            .unwrap()
            .unwrap();
        let rows = |ids: Vec<Option<i64>>| {
            let n = ids.len();
            RecordBatch::try_new(
                Arc::new(output()),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(vec!["m"; n])),
                ],
            )
            .unwrap()
        };
        let mut seen = HashMap::new();
        batch
            .check("verify", &rows(vec![Some(2), Some(1)]), &mut seen)
            .unwrap();
        // A key the caller did not send, a NULL key, a second row for a key.
        for ids in [vec![Some(3)], vec![None]] {
            let err = batch
                .check("verify", &rows(ids), &mut HashMap::new())
                .unwrap_err();
            assert!(err.to_string().contains("did not ask about"), "{err}");
        }
        let err = batch
            .check("verify", &rows(vec![Some(1)]), &mut seen)
            .unwrap_err();
        assert!(err.to_string().contains("max_rows = 1"), "{err}");
    }
}
