//! `lakegate_checked`, `lakegate_built` and `lakegate_subquery_value`: calls that pass their
//! argument through and count or refuse what it built.

use super::*;

/// What a [`Checked`] call checks of its one argument, passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Check {
    /// `lakegate_checked(x)`: an operand of `||`, refused past the limit.
    Operand,
    /// `lakegate_built(x)`: a CASE or a CAST to a type of varying width, which copies values
    /// without a function call: counted in the operator's turn ([`crate::batch_width`]).
    Built,
    /// `lakegate_subquery_value(x)`: a value from scalar subqueries, which a batch repeats for
    /// every row as it repeats a literal: refused past the literal limit (the limit over the
    /// batch size). A decorrelated subquery arrives as a column, each row's own value, which
    /// the batch guard checks as any column.
    SubqueryValue,
}

pub(super) const SUBQUERY_VALUE: &str = "lakegate_subquery_value";
pub(super) const BUILT: &str = "lakegate_built";

/// `x`, refused when it takes more than its [`Check`] allows.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Checked {
    check: Check,
    limit: usize,
    signature: Signature,
}

impl Checked {
    pub(super) fn new(check: Check, limit: usize) -> Self {
        Self {
            check,
            limit,
            signature: Signature::any(1, datafusion::logical_expr::Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Checked {
    fn name(&self) -> &str {
        match self.check {
            Check::Operand => "lakegate_checked",
            Check::Built => BUILT,
            Check::SubqueryValue => SUBQUERY_VALUE,
        }
    }

    /// A name of fixed length: the default spells the argument out, so every wrapper in a
    /// 990-term `||` chain copied its whole subtree's name, at every level DataFusion names
    /// (cubic planning, attacker round 14 M1). The names stay distinct for distinct arguments;
    /// the user's output names are restored around the wrappers ([`BoundFunctions`]).
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        args.hash(&mut h);
        Ok(format!("{}(#{:016x})", self.name(), h.finish()))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let value = args.args.remove(0);
        match (self.check, &value) {
            (Check::Operand, ColumnarValue::Scalar(v)) => {
                // `||` of constants is folded, or repeated for every row: a literal's bound.
                let most = literal_limit(self.limit, &args.config_options);
                let size = scalar_bytes(v);
                if size > most as u128 {
                    return Err(constant_too_large("||", size, self.limit, most));
                }
                let bytes = built_bytes(&value, args.number_rows);
                crate::batch_width::add("||", bytes, self.limit)?;
            }
            (Check::Built, _) => {
                let bytes = built_bytes(&value, args.number_rows);
                crate::batch_width::add("CASE or CAST", bytes, self.limit)?;
            }
            (Check::Operand, _) => {
                check("||", &value, self.limit)?;
                let bytes = built_bytes(&value, args.number_rows);
                crate::batch_width::add("||", bytes, self.limit)?;
            }
            (Check::SubqueryValue, ColumnarValue::Scalar(v)) => {
                let batch_size = usize::from(args.config_options.execution.batch_size);
                let most = self.limit / batch_size;
                let size = scalar_bytes(v);
                if size > most as u128 {
                    return Err(DataFusionError::ResourcesExhausted(format!(
                        "result too large: a value of {size} bytes from scalar subqueries, \
                         repeated over a batch of {batch_size} rows, would be more than \
                         [execution] max_batch_bytes ({} MiB); such values may be at most \
                         {most} bytes",
                        self.limit >> 20
                    )));
                }
                let bytes = built_bytes(&value, args.number_rows);
                crate::batch_width::add("a scalar subquery", bytes, self.limit)?;
            }
            (Check::SubqueryValue, ColumnarValue::Array(_)) => {}
        }
        Ok(value)
    }
}
