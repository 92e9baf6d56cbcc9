//! The grant's row predicate as a DataFusion expression over the raw columns.

mod sample;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::{Cast, Like};
use datafusion::logical_expr::{lit, Expr, Operator};
use datafusion::prelude::{and, or};

use policy::predicate::{CmpOp, Operand, Pattern, Predicate, Value};

/// Translates a row predicate; `key` is the deployment's secret, which samples are keyed with.
/// Type coercion happens when the physical expression is created.
pub(crate) fn to_expr(p: &Predicate, key: Option<&Arc<[u8]>>) -> Result<Expr> {
    Ok(match p {
        Predicate::Const(b) => lit(*b),
        Predicate::Cmp { left, op, right } => {
            let op = match op {
                CmpOp::Eq => Operator::Eq,
                CmpOp::NotEq => Operator::NotEq,
                CmpOp::Lt => Operator::Lt,
                CmpOp::LtEq => Operator::LtEq,
                CmpOp::Gt => Operator::Gt,
                CmpOp::GtEq => Operator::GtEq,
            };
            datafusion::logical_expr::binary_expr(operand(left)?, op, operand(right)?)
        }
        Predicate::InSet { column, values } => column_expr(column)
            .in_list(values.iter().map(value).collect::<Result<Vec<_>>>()?, false),
        Predicate::Like { column, pattern } => {
            let mut sql = String::new();
            for e in pattern {
                match e {
                    Pattern::Wildcard => sql.push('%'),
                    Pattern::Char(c @ ('%' | '_' | '\\')) => {
                        sql.push('\\');
                        sql.push(*c);
                    }
                    Pattern::Char(c) => sql.push(*c),
                }
            }
            Expr::Like(Like::new(
                false,
                Box::new(column_expr(column)),
                Box::new(lit(sql)),
                Some('\\'),
                false,
            ))
        }
        Predicate::Has(column) => column_expr(column).is_not_null(),
        Predicate::And(ps) => fold(ps, and, key)?,
        Predicate::Or(ps) => fold(ps, or, key)?,
        Predicate::Not(inner) => !to_expr(inner, key)?,
        Predicate::Sample {
            column,
            basis_points,
        } => {
            // Without the secret there is no sample: fail closed, naming the fix.
            let key = key.ok_or_else(|| {
                DataFusionError::Plan(
                    "a sampled read_row permit (@sample) needs the deployment's mask key: set [policy] mask_key or LAKEGATE_MASK_KEY".into(),
                )
            })?;
            sample::sample_expr(column_expr(column), *basis_points, key.clone())
        }
    })
}

fn fold(ps: &[Predicate], f: fn(Expr, Expr) -> Expr, key: Option<&Arc<[u8]>>) -> Result<Expr> {
    let mut exprs = ps.iter().map(|p| to_expr(p, key));
    let first = exprs
        .next()
        .ok_or_else(|| DataFusionError::Internal("an empty AND/OR in a row predicate".into()))??;
    exprs.try_fold(first, |acc, e| Ok(f(acc, e?)))
}

fn column_expr(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

fn operand(o: &Operand) -> Result<Expr> {
    match o {
        Operand::Column(c) => Ok(column_expr(c)),
        Operand::Literal(v) => value(v),
    }
}

fn value(v: &Value) -> Result<Expr> {
    Ok(match v {
        Value::Bool(b) => lit(*b),
        Value::Long(n) => lit(*n),
        Value::String(s) => lit(s.clone()),
        Value::Decimal(d) => lit(decimal(d)?),
        Value::Datetime(d) => Expr::Cast(Cast::new(
            Box::new(lit(d.clone())),
            DataType::Timestamp(TimeUnit::Microsecond, None),
        )),
    })
}

/// A Cedar decimal literal (`-12.3456`) as an exact DECIMAL.
fn decimal(text: &str) -> Result<ScalarValue> {
    let bad = || DataFusionError::Plan(format!("`{text}` is not a decimal literal"));
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let unscaled: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    let scale = i8::try_from(frac.len()).map_err(|_| bad())?;
    let precision = u8::try_from(int.len() + frac.len())
        .map_err(|_| bad())?
        .max(1);
    Ok(ScalarValue::Decimal128(
        Some(if neg { -unscaled } else { unscaled }),
        precision,
        scale,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::predicate::Pattern;

    #[test]
    fn translations() {
        let p = Predicate::And(vec![
            Predicate::Cmp {
                left: Operand::Column("district".into()),
                op: CmpOp::Eq,
                right: Operand::Literal(Value::String("North".into())),
            },
            Predicate::Not(Box::new(Predicate::Like {
                column: "name".into(),
                pattern: vec![Pattern::Char('1'), Pattern::Char('%'), Pattern::Wildcard],
            })),
        ]);
        assert_eq!(
            to_expr(&p, None).unwrap().to_string(),
            r#"district = Utf8("North") AND name NOT LIKE Utf8("1\%%") ESCAPE '\'"#
        );
        assert_eq!(
            decimal("-12.50").unwrap(),
            ScalarValue::Decimal128(Some(-1250), 4, 2)
        );
        assert!(decimal("1e5").is_err());
        // A sample is keyed: without the deployment's secret it is refused, not skipped.
        let sample = Predicate::Sample {
            column: "id".into(),
            basis_points: 1000,
        };
        let refused = to_expr(&sample, None).unwrap_err().to_string();
        assert!(
            refused.contains("needs the deployment's mask key"),
            "{refused}"
        );
        let key: Arc<[u8]> = Arc::from(&b"k"[..]);
        assert!(to_expr(&sample, Some(&key))
            .unwrap()
            .to_string()
            .contains("__lakegate_sample(id)"));
    }
}

#[cfg(test)]
mod agreement;
