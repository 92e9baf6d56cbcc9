//! [`Bounded`]: a function call that estimates its output before it runs and builds it in
//! slices that fit the limit.

use super::*;

/// A function that builds at most `limit` bytes of values per call.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bounded {
    pub(super) inner: Arc<ScalarUDF>,
    pub(super) limit: usize,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner: Arc::new(updated),
            limit: self.limit,
        }))
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Work one call does without returning to the runtime: bounded before it starts.
        if let Some(work) = quadratic_work(self.name(), &args.args, args.number_rows) {
            crate::batch_width::add_work(&format!("{}()", self.name()), work, MAX_WORK)?;
        }
        let rows = args.number_rows;
        let name = self.name().to_string();
        let out = self.invoke_bounded(args)?;
        // What the operator's other expressions built for this batch counts too.
        crate::batch_width::add(&format!("{name}()"), built_bytes(&out, rows), self.limit)?;
        Ok(out)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // Simplifying may merge constant arguments without calling the function (`concat`
        // joins its literal arguments): held to the literal limit before anything is joined.
        let constants: u128 = args
            .iter()
            .map(|a| match a {
                Expr::Literal(v, _) => scalar_bytes(v),
                _ => 0,
            })
            .sum();
        let most = literal_limit(self.limit, info.config_options());
        if constants > most as u128 {
            return Err(constant_too_large(
                &format!("{}()", self.name()),
                constants,
                self.limit,
                most,
            ));
        }
        // What a function simplifies to is bounded as well.
        match self.inner.inner().simplify(args, info)? {
            ExprSimplifyResult::Simplified(e) => {
                Ok(ExprSimplifyResult::Simplified(bound(e, self.limit)?.data))
            }
            original => Ok(original),
        }
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.inner().propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn placement(
        &self,
        args: &[datafusion::logical_expr::ExpressionPlacement],
    ) -> datafusion::logical_expr::ExpressionPlacement {
        self.inner.inner().placement(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

impl Bounded {
    /// The call, in slices whose estimates fit, each checked for what it really built.
    fn invoke_bounded(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if fixed_width(args.return_field.data_type()) {
            return self.inner.invoke_with_args(args);
        }
        let rows = args.number_rows;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let (estimates, exact) =
            estimate(self.name(), &args.args, if all_scalar { 1 } else { rows });
        let name = self.name().to_string();
        if let Some(&worst) = estimates.iter().max() {
            if worst > self.limit as u128 {
                return Err(too_large(
                    &format!("{name}() for one row"),
                    clamp(worst),
                    self.limit,
                ));
            }
        }
        if all_scalar {
            // Its value is folded into a literal, or repeated for every row as one is: held to
            // what a literal may be (a 300 MB `concat` of `repeat`s was built at planning, where
            // nothing yields, attacker round 13 H2). Before it is built for the functions that
            // grow their input; the others make a few times their arguments, literals already.
            let most = literal_limit(self.limit, &args.config_options);
            match estimates.iter().max() {
                Some(&worst) if exact && worst > most as u128 => {
                    return Err(constant_too_large(
                        &format!("{name}()"),
                        worst,
                        self.limit,
                        most,
                    ));
                }
                _ => {}
            }
            let out = self.inner.invoke_with_args(args)?;
            check(&name, &out, self.limit)?;
            let size = value_bytes(&out);
            if size > most as u128 {
                return Err(constant_too_large(
                    &format!("{name}()"),
                    size,
                    self.limit,
                    most,
                ));
            }
            return Ok(out);
        }
        let total: u128 = estimates.iter().sum();
        if total <= self.limit as u128 {
            let out = self.inner.invoke_with_args(args)?;
            check(&name, &out, self.limit)?;
            return Ok(out);
        }
        // Slices of rows whose estimates fit, each checked for what it really built.
        let mut parts: Vec<ArrayRef> = Vec::new();
        let mut built = 0usize;
        let mut start = 0usize;
        while start < rows {
            let mut end = start;
            let mut sum = 0u128;
            while end < rows && (end == start || sum + estimates[end] <= self.limit as u128) {
                sum += estimates[end];
                end += 1;
            }
            let slice = ScalarFunctionArgs {
                args: args
                    .args
                    .iter()
                    .map(|a| match a {
                        ColumnarValue::Array(a) => {
                            ColumnarValue::Array(a.slice(start, end - start))
                        }
                        s => s.clone(),
                    })
                    .collect(),
                arg_fields: args.arg_fields.clone(),
                number_rows: end - start,
                return_field: args.return_field.clone(),
                config_options: args.config_options.clone(),
            };
            let part = self
                .inner
                .invoke_with_args(slice)?
                .into_array(end - start)?;
            built += part.get_array_memory_size();
            if built > self.limit {
                return Err(too_large(&format!("{name}()"), built, self.limit));
            }
            parts.push(part);
            start = end;
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
        Ok(ColumnarValue::Array(concat(&refs)?))
    }
}

/// Bytes `out` takes once it is a column of `rows` rows (a scalar is repeated for each).
pub(super) fn built_bytes(out: &ColumnarValue, rows: usize) -> usize {
    match out {
        ColumnarValue::Array(a) => a.get_array_memory_size(),
        ColumnarValue::Scalar(s) => clamp(scalar_bytes(s).saturating_mul(rows.max(1) as u128)),
    }
}

pub(super) fn clamp(v: u128) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Bytes of a call's output as it is (a scalar once).
pub(super) fn value_bytes(out: &ColumnarValue) -> u128 {
    match out {
        ColumnarValue::Array(a) => a.get_array_memory_size() as u128,
        ColumnarValue::Scalar(s) => scalar_bytes(s),
    }
}

pub(super) fn check(name: &str, out: &ColumnarValue, limit: usize) -> Result<()> {
    let bytes = clamp(value_bytes(out));
    if bytes > limit {
        return Err(too_large(&format!("{name}()"), bytes, limit));
    }
    Ok(())
}
