//! A data product call in a user's plan: `FROM name(arg, ...)` planned as a [`ProductCall`]
//! leaf.
//!
//! ```text
//! SELECT lapsed FROM lapse_check($1)
//!
//! Projection: lapse_check.lapsed
//!   ProductCall: lapse_check($1)          <- a leaf: the product's own plan is made, with the
//!                                            product as principal, only when the call is
//!                                            planned physically, and never shown
//! ```
//!
//! The call is a leaf so that nothing of the caller's query (a filter, a join condition, a
//! projection) is ever pushed into the product's plan, and the product's plan never appears
//! in the caller's plan, EXPLAIN or errors. Its arguments are the node's expressions, so a
//! prepared statement's `?`/`$n` are bound like any other.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use datafusion::common::{plan_err, DFSchema, DFSchemaRef, Result, ScalarValue};
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, TableFactor};

use super::Product;
use crate::session::Sessions;

/// Who calls, under which scenario: what a call is decided and planned with.
pub(crate) struct CallEnv {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) user: String,
    pub(crate) scenario: String,
    /// The statement's query id: its call records name it.
    pub(crate) query_id: String,
}

impl fmt::Debug for CallEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallEnv")
            .field("user", &self.user)
            .field("scenario", &self.scenario)
            .finish()
    }
}

/// The relation planner of a user's session: `name(args)` where `name` is a product the user
/// may invoke under the session's scenario becomes a [`ProductCall`]; anything else is left
/// to DataFusion (so a product the user may not invoke fails as an unknown function does).
#[derive(Debug)]
pub(crate) struct Calls {
    env: Arc<CallEnv>,
    products: Arc<super::ProductSet>,
}

impl Calls {
    /// The calls `user` may make under `scenario`, decided when a call is planned.
    pub(crate) fn for_user(
        sessions: &Arc<Sessions>,
        user: &str,
        scenario: &str,
        query_id: &str,
    ) -> Calls {
        Calls {
            products: sessions.products(),
            env: Arc::new(CallEnv {
                sessions: sessions.clone(),
                user: user.to_string(),
                scenario: scenario.to_string(),
                query_id: query_id.to_string(),
            }),
        }
    }

    /// `lake` with the listing of the products this caller may call (`lakegate.products`).
    pub(crate) fn catalog(
        &self,
        lake: Arc<dyn datafusion::catalog::CatalogProvider>,
    ) -> super::SessionCatalog {
        super::SessionCatalog::new(lake, self.env.clone())
    }

    /// The product `name`, if the caller may invoke it now.
    fn invokable(&self, name: &str) -> Option<Arc<Product>> {
        let product = self.products.get(name)?;
        let policies = self.env.sessions.policies();
        match policies.may_invoke(&self.env.user, &self.env.scenario, name, SystemTime::now()) {
            Ok((true, _)) => Some(product.clone()),
            Ok((false, _)) => None,
            Err(e) => {
                // Fail closed: a call that cannot be decided is not offered.
                tracing::warn!(user = %self.env.user, product = name, "cannot decide invoke: {e}");
                None
            }
        }
    }
}

impl RelationPlanner for Calls {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        let TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } = &relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let [part] = name.0.as_slice() else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let Some(ident) = part.as_ident() else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let called = context.normalize_ident(ident.clone());
        let Some(product) = self.invokable(&called) else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let params = &product.file.params;
        if args.args.len() != params.len() {
            return plan_err!(
                "data product {called} takes {} argument(s) ({}), not {}",
                params.len(),
                signature(&product),
                args.args.len()
            );
        }
        let mut exprs = Vec::with_capacity(params.len());
        for (i, arg) in args.args.iter().enumerate() {
            let FunctionArg::Unnamed(FunctionArgExpr::Expr(sql)) = arg else {
                return plan_err!(
                    "data product {called}: pass argument {} ({}) by position",
                    i + 1,
                    params[i].name
                );
            };
            let expr = context.sql_to_expr(sql.clone(), &DFSchema::empty())?;
            exprs.push(argument(&product, i, expr)?);
        }
        // Literal lists are checked now (length, NULLs, lengths alike), as bound ones are
        // when the call is planned to run: the statement is refused before it is prepared.
        let lists: Option<std::collections::HashMap<String, ScalarValue>> = params
            .iter()
            .zip(&exprs)
            .filter(|(p, _)| p.list)
            .map(|(p, e)| literal_value(e).map(|v| (p.name.clone(), v)))
            .collect();
        if let Some(values) = lists.filter(|v| !v.is_empty()) {
            super::batch::bound_batch(&product.file, product.output.as_arrow(), &values)?;
        }
        let plan = ProductCall {
            product,
            args: exprs,
            env: self.env.clone(),
        }
        .into_plan();
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan,
            alias.clone(),
        ))))
    }
}

/// `name type, ...`, for errors.
pub(crate) fn signature(product: &Product) -> String {
    product
        .file
        .params
        .iter()
        .map(|p| format!("{} {}", p.name, p.type_word()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Argument `i` as the call keeps it: a placeholder typed by the parameter, or a literal cast
/// to the parameter's type. Anything else is refused: an argument is a value, not a query.
fn argument(product: &Product, i: usize, expr: Expr) -> Result<Expr> {
    let (param, ty) = (&product.file.params[i], &product.types[i]);
    let name = product.name();
    match expr {
        Expr::Placeholder(mut p) => {
            // Typed by the parameter, and marked with its kind: binding refuses a value of
            // another kind instead of converting it (`2.9` for an int ran as 2, round 23 L1).
            let marked = datafusion::arrow::datatypes::Field::new("", ty.clone(), true)
                .with_metadata(
                    [
                        (PARAM_KIND_KEY.to_string(), param.type_word()),
                        (
                            PARAM_NAME_KEY.to_string(),
                            format!("data product {name}: argument {} ({})", i + 1, param.name),
                        ),
                    ]
                    .into(),
                );
            p.field = Some(Arc::new(marked));
            Ok(Expr::Placeholder(p))
        }
        other => match literal_value(&other) {
            Some(v) if !accepts_param(param, &v.data_type()) => plan_err!(
                "data product {name}: argument {} ({}) must be {}, not {}",
                i + 1,
                param.name,
                a_word(&param.type_word()),
                v.data_type()
            ),
            Some(v) => Ok(Expr::Literal(
                cast_argument(name, i, &param.name, ty, v)?,
                None,
            )),
            None => plan_err!(
                "data product {name}: argument {} ({}) must be a literal or a parameter (? or $n)",
                i + 1,
                param.name
            ),
        },
    }
}

/// The placeholder field metadata naming the data product parameter kind it stands for.
pub(crate) const PARAM_KIND_KEY: &str = "lakegate.product_param";

/// The placeholder field metadata naming the product and parameter, for binding's errors.
pub(crate) const PARAM_NAME_KEY: &str = "lakegate.product_argument";

/// Whether a value of type `t` may stand for a parameter of the kind `word` names (a field's
/// [`PARAM_KIND_KEY`]); an unknown word accepts nothing.
pub(crate) fn accepts_kind(word: &str, t: &datafusion::arrow::datatypes::DataType) -> bool {
    lake_config::products::parse_type_word(word).is_some_and(|(ty, list)| accepts_as(ty, list, t))
}

/// Whether a value of type `t` may stand for `param`.
fn accepts_param(
    param: &lake_config::products::Param,
    t: &datafusion::arrow::datatypes::DataType,
) -> bool {
    accepts_as(param.ty, param.list, t)
}

/// [`accepts`] for a parameter of `ty`, or a list of them: a list of values it accepts.
fn accepts_as(
    ty: lake_config::products::ParamType,
    list: bool,
    t: &datafusion::arrow::datatypes::DataType,
) -> bool {
    use datafusion::arrow::datatypes::DataType::*;
    if !list {
        return accepts(ty, t);
    }
    match t {
        List(f) | LargeList(f) | FixedSizeList(f, _) | ListView(f) | LargeListView(f) => {
            // An empty literal list's values have no type yet.
            *f.data_type() == Null || accepts(ty, f.data_type())
        }
        _ => false,
    }
}

/// Whether a literal of type `t` may stand for a parameter of type `ty`: of its kind (text for
/// text, a whole number for an int, a number for a decimal), or text for a date or time,
/// which is parsed. `1.7` for an int, or `1` for a string, is refused, not converted.
fn accepts(
    ty: lake_config::products::ParamType,
    t: &datafusion::arrow::datatypes::DataType,
) -> bool {
    use datafusion::arrow::datatypes::DataType::*;
    use lake_config::products::ParamType as P;
    let text = matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let whole = t.is_integer();
    match ty {
        P::String => text,
        P::Int => whole,
        P::Decimal => whole || matches!(t, Decimal128(..) | Decimal256(..) | Float32 | Float64),
        P::Date => text || matches!(t, Date32 | Date64),
        P::Timestamp => text || matches!(t, Timestamp(..) | Date32 | Date64),
        P::Bool => matches!(t, Boolean),
    }
}

/// `expr` without the aliases around it.
pub(crate) fn bare(mut expr: &Expr) -> &Expr {
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    expr
}

/// The value of a literal, a negated literal, a cast of one, or a list of them (`['a', 'b']`,
/// `make_array('a', 'b')`).
pub(crate) fn literal_value(expr: &Expr) -> Option<ScalarValue> {
    match bare(expr) {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::ScalarFunction(f) if f.name() == "make_array" => {
            let values: Vec<ScalarValue> =
                f.args.iter().map(literal_value).collect::<Option<_>>()?;
            if values.is_empty() {
                return Some(ScalarValue::List(ScalarValue::new_list_nullable(
                    &[],
                    &datafusion::arrow::datatypes::DataType::Null,
                )));
            }
            // Values of one type only: converting `[1, 2.9]` to a list of ints would run 2.9
            // as 2 (attacker round 23 L1).
            let ty = values
                .iter()
                .find(|v| !v.is_null())
                .map_or(datafusion::arrow::datatypes::DataType::Null, |v| {
                    v.data_type()
                });
            if values.iter().any(|v| !v.is_null() && v.data_type() != ty) {
                return None;
            }
            // NULLs typed as the values beside them (refused when the call is bound).
            let values = values
                .into_iter()
                .map(|v| {
                    if v.is_null() {
                        ScalarValue::try_from(&ty)
                    } else {
                        Ok(v)
                    }
                })
                .collect::<Result<Vec<_>>>()
                .ok()?;
            Some(ScalarValue::List(ScalarValue::new_list_nullable(
                &values, &ty,
            )))
        }
        Expr::Negative(inner) => literal_value(inner)?.arithmetic_negate().ok(),
        Expr::Cast(c) => literal_value(&c.expr)?.cast_to(c.field.data_type()).ok(),
        _ => None,
    }
}

/// `value` as parameter `i`'s type, or an error naming the product and the parameter.
pub(crate) fn cast_argument(
    product: &str,
    i: usize,
    param: &str,
    ty: &datafusion::arrow::datatypes::DataType,
    value: ScalarValue,
) -> Result<ScalarValue> {
    use datafusion::arrow::datatypes::DataType::{LargeUtf8, Utf8, Utf8View};
    if value.data_type() == *ty {
        return Ok(value);
    }
    let kind = value.data_type();
    value.cast_to(ty).or_else(|_| {
        if matches!(kind, Utf8 | LargeUtf8 | Utf8View) {
            return plan_err!(
                "data product {product}: argument {} ({param}) is not a valid {}",
                i + 1,
                type_word(ty)
            );
        }
        plan_err!(
            "data product {product}: argument {} ({param}) must be {}, not {kind}",
            i + 1,
            a_word(type_word(ty))
        )
    })
}

/// `word` with its article: "an int", "a string".
pub(crate) fn a_word(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {word}")
}

/// The product file's word for an Arrow type it binds.
fn type_word(ty: &datafusion::arrow::datatypes::DataType) -> &'static str {
    use datafusion::arrow::datatypes::DataType::*;
    match ty {
        Utf8 => "string",
        Int64 => "int",
        Decimal128(..) => "decimal",
        Date32 => "date",
        Timestamp(..) => "timestamp",
        Boolean => "bool",
        List(_) => "list",
        _ => "value of its type",
    }
}

/// The logical call: a leaf whose expressions are the arguments.
#[derive(Clone)]
pub(crate) struct ProductCall {
    pub(crate) product: Arc<Product>,
    pub(crate) args: Vec<Expr>,
    pub(crate) env: Arc<CallEnv>,
}

impl ProductCall {
    /// This node as a plan.
    pub(crate) fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The call a plan node is, if it is one.
    pub(crate) fn of(plan: &LogicalPlan) -> Option<&ProductCall> {
        match plan {
            LogicalPlan::Extension(e) => {
                let any: &dyn std::any::Any = e.node.as_any();
                any.downcast_ref::<ProductCall>()
            }
            _ => None,
        }
    }

    /// `name@version(args)`, for the audit trail.
    pub(crate) fn describe(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| bare(a).to_string()).collect();
        format!(
            "{}@{}({})",
            self.product.name(),
            &self.product.file.version[..12],
            args.join(", ")
        )
    }
}

/// The call as the caller wrote it: its Debug form reaches clients (`EXPLAIN FORMAT PGJSON`
/// prints plan nodes with it), so it names the product and the arguments, never the product's
/// SQL, file or limits (attacker round 24 M1).
impl fmt::Debug for ProductCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProductCall")
            .field("name", &self.product.name())
            .field("args", &self.args)
            .finish()
    }
}

impl PartialEq for ProductCall {
    fn eq(&self, other: &Self) -> bool {
        self.product.name() == other.product.name()
            && self.product.file.version == other.product.file.version
            && self.args == other.args
    }
}
impl Eq for ProductCall {}
impl Hash for ProductCall {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.product.name().hash(state);
        self.args.hash(state);
    }
}
impl PartialOrd for ProductCall {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.product.name().partial_cmp(other.product.name()) {
            Some(Ordering::Equal) => self.args.partial_cmp(&other.args),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for ProductCall {
    fn name(&self) -> &str {
        "ProductCall"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.product.output
    }

    fn expressions(&self) -> Vec<Expr> {
        self.args.clone()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let args: Vec<String> = self.args.iter().map(|a| a.to_string()).collect();
        write!(
            f,
            "ProductCall: {}({})",
            self.product.name(),
            args.join(", ")
        )
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        if !inputs.is_empty() || exprs.len() != self.args.len() {
            return plan_err!("a data product call has no inputs and one expression per argument");
        }
        Ok(Self {
            product: self.product.clone(),
            args: exprs,
            env: self.env.clone(),
        })
    }
}
