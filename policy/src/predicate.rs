//! Row predicates: the residuals of Cedar's type-aware partial evaluation (the row unknown),
//! translated into a small predicate language that the gateway evaluates inside the scan.
//!
//! ```text
//! policy:    permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"read_row",
//!                    resource is Lake::Rows::hr::employees)
//!            when { resource.district == principal.district };
//! residual:  resource.district == "North"                  (alice: district North)
//! predicate: Cmp(Column("district"), Eq, Literal(String("North")))
//! ```
//!
//! The translator understands comparisons, `&&`, `||`, `!`, `[..].contains(..)`, `like`, `has`,
//! literals (Bool, Long, String, `decimal(..)`, `datetime(..)`) and `resource.<column>`. Anything
//! else is an error: the caller then grants no rows (fail closed).

use std::collections::BTreeSet;
use std::fmt;

use cedar_policy::pst::{BinaryOp, Clause, Expr, Literal, PatternElem, UnaryOp, Var};

/// A literal value in a row predicate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Long(i64),
    /// A string.
    String(String),
    /// A Cedar decimal, as written (`"12.50"`).
    Decimal(String),
    /// A Cedar datetime, in UTC with milliseconds (`"2025-01-01T00:00:00.000Z"`), whatever
    /// form the policy wrote it in.
    Datetime(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// One element of a `like` pattern.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pattern {
    /// A literal character.
    Char(char),
    /// `*`: any run of characters.
    Wildcard,
}

/// A boolean condition on the raw columns of one row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Predicate {
    /// A constant.
    Const(bool),
    /// `left op right`, each side a column or a literal.
    Cmp {
        /// Left operand.
        left: Operand,
        /// Operator.
        op: CmpOp,
        /// Right operand.
        right: Operand,
    },
    /// The column's value is one of the set.
    InSet {
        /// The column.
        column: String,
        /// The values.
        values: Vec<Value>,
    },
    /// The column matches a `like` pattern.
    Like {
        /// The column.
        column: String,
        /// The pattern.
        pattern: Vec<Pattern>,
    },
    /// The column has a value (is not NULL).
    Has(String),
    /// Every part holds.
    And(Vec<Predicate>),
    /// Some part holds.
    Or(Vec<Predicate>),
    /// The part does not hold.
    Not(Box<Predicate>),
    /// The row's subject is in the deployment's sample (`@sample`, `policy-model.md` §8): a
    /// keyed hash of the subject key with the deployment's secret, the same in every query.
    Sample {
        /// The table's subject key column.
        column: String,
        /// The share of subjects kept, in hundredths of a percent (1..=10,000).
        basis_points: u16,
    },
}

/// A side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operand {
    /// A column of the row.
    Column(String),
    /// A literal.
    Literal(Value),
}

impl Predicate {
    /// The columns the predicate reads.
    pub fn columns(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns(&self, out: &mut BTreeSet<String>) {
        match self {
            Predicate::Const(_) => {}
            Predicate::Cmp { left, right, .. } => {
                for o in [left, right] {
                    if let Operand::Column(c) = o {
                        out.insert(c.clone());
                    }
                }
            }
            Predicate::InSet { column, .. }
            | Predicate::Like { column, .. }
            | Predicate::Has(column)
            | Predicate::Sample { column, .. } => {
                out.insert(column.clone());
            }
            Predicate::And(ps) | Predicate::Or(ps) => {
                ps.iter().for_each(|p| p.collect_columns(out));
            }
            Predicate::Not(p) => p.collect_columns(out),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Long(n) => write!(f, "{n}"),
            Value::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Value::Decimal(d) => write!(f, "{d}"),
            Value::Datetime(d) => write!(f, "TIMESTAMP '{d}'"),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Column(c) => write!(f, "\"{}\"", c.replace('"', "\"\"")),
            Operand::Literal(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for Predicate {
    /// SQL-like text, for `explain` and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, ps: &[Predicate], sep: &str| {
            write!(f, "(")?;
            for (i, p) in ps.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                write!(f, "{p}")?;
            }
            write!(f, ")")
        };
        match self {
            Predicate::Const(b) => write!(f, "{}", if *b { "TRUE" } else { "FALSE" }),
            Predicate::Cmp { left, op, right } => {
                let op = match op {
                    CmpOp::Eq => "=",
                    CmpOp::NotEq => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::LtEq => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::GtEq => ">=",
                };
                write!(f, "{left} {op} {right}")
            }
            Predicate::InSet { column, values } => {
                write!(f, "{} IN (", Operand::Column(column.clone()))?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, ")")
            }
            Predicate::Like { column, pattern } => {
                let p: String = pattern
                    .iter()
                    .map(|e| match e {
                        Pattern::Char(c) => c.to_string(),
                        Pattern::Wildcard => "*".into(),
                    })
                    .collect();
                write!(f, "{} LIKE (cedar) '{p}'", Operand::Column(column.clone()))
            }
            Predicate::Has(c) => write!(f, "{} IS NOT NULL", Operand::Column(c.clone())),
            Predicate::And(ps) => join(f, ps, "AND"),
            Predicate::Or(ps) => join(f, ps, "OR"),
            Predicate::Not(p) => write!(f, "NOT ({p})"),
            Predicate::Sample {
                column,
                basis_points,
            } => write!(
                f,
                "{} IN SAMPLE ({})",
                Operand::Column(column.clone()),
                percent(*basis_points)
            ),
        }
    }
}

/// `@sample("N")`: N percent of subjects, 0 < N <= 100, at most two decimals; in hundredths
/// of a percent.
pub fn parse_sample(text: &str) -> Result<u16, String> {
    let why = || {
        format!("@sample(\"{text}\") must be a percentage above 0 and at most 100 with at most two decimals, e.g. @sample(\"10\") or @sample(\"0.5\")")
    };
    let (int, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() || int.len() > 3 || frac.len() > 2 || !digits(int) || !digits(frac) {
        return Err(why());
    }
    let int: u16 = int.parse().map_err(|_| why())?;
    let frac: u16 = format!("{frac:0<2}").parse().map_err(|_| why())?;
    let bp = int * 100 + frac;
    if bp == 0 || bp > 10_000 {
        return Err(why());
    }
    Ok(bp)
}

/// `12.5%` from hundredths of a percent.
fn percent(basis_points: u16) -> String {
    let (int, frac) = (basis_points / 100, basis_points % 100);
    match frac {
        0 => format!("{int}%"),
        f if f % 10 == 0 => format!("{int}.{}%", f / 10),
        f => format!("{int}.{f:02}%"),
    }
}

/// Why a residual could not be translated. The rows it would admit are not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot translate the row condition `{0}`")]
pub struct Untranslatable(pub String);

/// Translates the condition of a residual policy: the conjunction of its `when` clauses and the
/// negations of its `unless` clauses.
pub fn translate_clauses(
    clauses: &[Clause],
    columns: &[String],
) -> Result<Predicate, Untranslatable> {
    let mut parts = Vec::new();
    for c in clauses {
        match c {
            Clause::When(e) => parts.push(translate(e, columns)?),
            Clause::Unless(e) => parts.push(Predicate::Not(Box::new(translate(e, columns)?))),
        }
    }
    Ok(simplify_and(parts))
}

fn simplify_and(parts: Vec<Predicate>) -> Predicate {
    flatten(parts, true)
}

fn simplify_or(parts: Vec<Predicate>) -> Predicate {
    flatten(parts, false)
}

/// AND (`conjunction`) or OR of `parts`, flattened, with constants folded: the neutral constant
/// drops out, the absorbing one decides.
fn flatten(parts: Vec<Predicate>, conjunction: bool) -> Predicate {
    let mut out = Vec::new();
    for p in parts {
        match p {
            Predicate::Const(b) if b == conjunction => {}
            Predicate::Const(b) => return Predicate::Const(b),
            Predicate::And(inner) if conjunction => out.extend(inner),
            Predicate::Or(inner) if !conjunction => out.extend(inner),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Predicate::Const(conjunction),
        1 => out.pop().expect("one"),
        _ if conjunction => Predicate::And(out),
        _ => Predicate::Or(out),
    }
}

/// Every one of `parts`, flattened and folded.
pub fn all(parts: Vec<Predicate>) -> Predicate {
    simplify_and(parts)
}

/// `permits OR-ed, AND NOT each forbid`.
pub fn combine(permits: Vec<Predicate>, forbids: Vec<Predicate>) -> Predicate {
    let allowed = simplify_or(permits);
    let mut parts = vec![allowed];
    parts.extend(forbids.into_iter().map(|f| match f {
        Predicate::Const(b) => Predicate::Const(!b),
        other => Predicate::Not(Box::new(other)),
    }));
    simplify_and(parts)
}

/// Translates one Cedar expression over `resource` (the row) into a predicate.
pub fn translate(e: &Expr, columns: &[String]) -> Result<Predicate, Untranslatable> {
    let fail = || Untranslatable(e.to_string());
    match e {
        Expr::Literal(Literal::Bool(b)) => Ok(Predicate::Const(*b)),
        Expr::UnaryOp {
            op: UnaryOp::Not,
            expr,
        } => Ok(match translate(expr, columns)? {
            Predicate::Const(b) => Predicate::Const(!b),
            Predicate::Not(inner) => *inner,
            p => Predicate::Not(Box::new(p)),
        }),
        Expr::BinaryOp { op, left, right } => match op {
            BinaryOp::And => Ok(simplify_and(vec![
                translate(left, columns)?,
                translate(right, columns)?,
            ])),
            BinaryOp::Or => Ok(simplify_or(vec![
                translate(left, columns)?,
                translate(right, columns)?,
            ])),
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Less
            | BinaryOp::LessEq
            | BinaryOp::Greater
            | BinaryOp::GreaterEq
            | BinaryOp::DecimalLessThan
            | BinaryOp::DecimalLessEq
            | BinaryOp::DecimalGreater
            | BinaryOp::DecimalGreaterEq => {
                let op = match op {
                    BinaryOp::Eq => CmpOp::Eq,
                    BinaryOp::NotEq => CmpOp::NotEq,
                    BinaryOp::Less | BinaryOp::DecimalLessThan => CmpOp::Lt,
                    BinaryOp::LessEq | BinaryOp::DecimalLessEq => CmpOp::LtEq,
                    BinaryOp::Greater | BinaryOp::DecimalGreater => CmpOp::Gt,
                    _ => CmpOp::GtEq,
                };
                let left = operand(left, columns).ok_or_else(fail)?;
                let right = operand(right, columns).ok_or_else(fail)?;
                if let (Operand::Literal(a), Operand::Literal(b)) = (&left, &right) {
                    // Both known: only equality of like literals folds safely.
                    return match op {
                        CmpOp::Eq => Ok(Predicate::Const(a == b)),
                        CmpOp::NotEq => Ok(Predicate::Const(a != b)),
                        _ => Err(fail()),
                    };
                }
                Ok(Predicate::Cmp { left, op, right })
            }
            BinaryOp::Contains => {
                // `[v1, v2].contains(resource.col)`
                let Expr::Set(items) = left.as_ref() else {
                    return Err(fail());
                };
                let Some(Operand::Column(column)) = operand(right, columns) else {
                    return Err(fail());
                };
                let values = items
                    .iter()
                    .map(|i| match operand(i, columns) {
                        Some(Operand::Literal(v)) => Ok(v),
                        _ => Err(fail()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if values.is_empty() {
                    return Ok(Predicate::Const(false));
                }
                Ok(Predicate::InSet { column, values })
            }
            _ => Err(fail()),
        },
        Expr::Like { expr, pattern } => {
            let Some(Operand::Column(column)) = operand(expr, columns) else {
                return Err(fail());
            };
            let pattern = pattern
                .iter()
                .map(|p| match p {
                    PatternElem::Char(c) => Pattern::Char(*c),
                    PatternElem::Wildcard => Pattern::Wildcard,
                })
                .collect();
            Ok(Predicate::Like { column, pattern })
        }
        // A Bool column alone: `when { resource.active }`.
        Expr::GetAttr { .. } => match operand(e, columns) {
            Some(Operand::Column(column)) => Ok(Predicate::Cmp {
                left: Operand::Column(column),
                op: CmpOp::Eq,
                right: Operand::Literal(Value::Bool(true)),
            }),
            _ => Err(fail()),
        },
        Expr::HasAttr { expr, attrs } => {
            if !matches!(expr.as_ref(), Expr::Var(Var::Resource)) || attrs.len() != 1 {
                return Err(fail());
            }
            let column = attrs.first().to_string();
            if !columns.contains(&column) {
                return Ok(Predicate::Const(false));
            }
            Ok(Predicate::Has(column))
        }
        _ => Err(fail()),
    }
}

/// A column of the row, or a literal.
fn operand(e: &Expr, columns: &[String]) -> Option<Operand> {
    match e {
        Expr::GetAttr { expr, attr } if matches!(expr.as_ref(), Expr::Var(Var::Resource)) => {
            let attr = attr.to_string();
            columns.contains(&attr).then_some(Operand::Column(attr))
        }
        Expr::Literal(Literal::Bool(b)) => Some(Operand::Literal(Value::Bool(*b))),
        Expr::Literal(Literal::Long(n)) => Some(Operand::Literal(Value::Long(*n))),
        Expr::Literal(Literal::String(s)) => Some(Operand::Literal(Value::String(s.to_string()))),
        Expr::UnaryOp { op, expr } => match (op, expr.as_ref()) {
            (UnaryOp::Decimal, Expr::Literal(Literal::String(s))) => {
                Some(Operand::Literal(Value::Decimal(s.to_string())))
            }
            (UnaryOp::Datetime, Expr::Literal(Literal::String(s))) => {
                datetime_millis(s).and_then(datetime)
            }
            _ => None,
        },
        // Partial evaluation writes a datetime as the epoch offset by a duration in ms:
        // `datetime("1970-01-01").offset(duration("1735603200000ms"))`.
        Expr::BinaryOp {
            op: BinaryOp::Offset,
            left,
            right,
        } => match (left.as_ref(), right.as_ref()) {
            (
                Expr::UnaryOp {
                    op: UnaryOp::Datetime,
                    expr: base,
                },
                Expr::UnaryOp {
                    op: UnaryOp::Duration,
                    expr: offset,
                },
            ) => {
                let (Expr::Literal(Literal::String(base)), Expr::Literal(Literal::String(offset))) =
                    (base.as_ref(), offset.as_ref())
                else {
                    return None;
                };
                let ms: i64 = offset.strip_suffix("ms")?.parse().ok()?;
                datetime_millis(base)?.checked_add(ms).and_then(datetime)
            }
            _ => None,
        },
        _ => None,
    }
}

/// A datetime literal in one form, UTC with milliseconds, whatever form Cedar was given; `None`
/// past what the translation can write (the condition then fails closed).
fn datetime(ms: i64) -> Option<Operand> {
    let at = chrono::DateTime::from_timestamp_millis(ms)?;
    Some(Operand::Literal(Value::Datetime(
        at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )))
}

/// Milliseconds since the epoch of a Cedar datetime string: `YYYY-MM-DD`, or
/// `YYYY-MM-DDThh:mm:ss[.SSS]` followed by `Z` or `(+|-)hhmm`. Anything else: `None`, and
/// the condition fails closed.
fn datetime_millis(s: &str) -> Option<i64> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if s.len() == 10 {
            return Some(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
        }
    }
    let with_offset = match s.strip_suffix('Z') {
        Some(rest) => format!("{rest}+0000"),
        None => s.to_string(),
    };
    ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%.3f%z"]
        .iter()
        .find_map(|f| chrono::DateTime::parse_from_str(&with_offset, f).ok())
        .map(|at| at.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn columns() -> Vec<String> {
        ["district", "salary", "name", "cost", "visit_date", "active"]
            .map(String::from)
            .to_vec()
    }

    /// The condition of `permit (principal, action, resource) when { <cond> };`, translated.
    fn tr(cond: &str) -> Result<String, Untranslatable> {
        let text = format!("permit (principal, action, resource) when {{ {cond} }};");
        let policy = cedar_policy::Policy::from_str(&text).unwrap();
        let pst = policy.to_pst().unwrap();
        translate_clauses(pst.body().clauses(), &columns()).map(|p| p.to_string())
    }

    #[test]
    fn comparisons_and_literals() {
        assert_eq!(
            tr(r#"resource.district == "North""#).unwrap(),
            r#""district" = 'North'"#
        );
        assert_eq!(tr("resource.salary != 5").unwrap(), r#""salary" <> 5"#);
        assert_eq!(tr("resource.salary < 5").unwrap(), r#""salary" < 5"#);
        assert_eq!(tr("resource.salary <= 5").unwrap(), r#""salary" <= 5"#);
        assert_eq!(tr("resource.salary > 5").unwrap(), r#""salary" > 5"#);
        assert_eq!(tr("5 >= resource.salary").unwrap(), r#"5 >= "salary""#);
        assert_eq!(tr("resource.active == true").unwrap(), r#""active" = true"#);
        assert_eq!(tr("resource.active").unwrap(), r#""active" = true"#);
        assert_eq!(tr("!resource.active").unwrap(), r#"NOT ("active" = true)"#);
        assert_eq!(
            tr(r#"resource.name == "O'Brien""#).unwrap(),
            r#""name" = 'O''Brien'"#
        );
    }

    #[test]
    fn extension_literals() {
        assert_eq!(
            tr(r#"resource.cost.lessThan(decimal("12.50"))"#).unwrap(),
            r#""cost" < 12.50"#
        );
        assert_eq!(
            tr(r#"resource.visit_date < datetime("2025-01-01")"#).unwrap(),
            r#""visit_date" < TIMESTAMP '2025-01-01T00:00:00.000Z'"#
        );
        // Offsets become UTC; partial evaluation's epoch-plus-milliseconds form is read.
        assert_eq!(
            tr(r#"resource.visit_date < datetime("2025-01-01T08:00:00.250+0800")"#).unwrap(),
            r#""visit_date" < TIMESTAMP '2025-01-01T00:00:00.250Z'"#
        );
        assert_eq!(
            tr(r#"resource.visit_date < datetime("1970-01-01").offset(duration("1735603200000ms"))"#)
                .unwrap(),
            r#""visit_date" < TIMESTAMP '2024-12-31T00:00:00.000Z'"#
        );
        assert!(
            tr(r#"resource.visit_date < datetime("2025-01-01").offset(duration("1d"))"#).is_err()
        );
    }

    #[test]
    fn boolean_structure() {
        assert_eq!(
            tr(r#"resource.district == "North" && resource.salary > 5"#).unwrap(),
            r#"("district" = 'North' AND "salary" > 5)"#
        );
        assert_eq!(
            tr(r#"resource.district == "North" || resource.district == "South""#).unwrap(),
            r#"("district" = 'North' OR "district" = 'South')"#
        );
        assert_eq!(
            tr(r#"!(resource.district == "North")"#).unwrap(),
            r#"NOT ("district" = 'North')"#
        );
        assert_eq!(tr("!!(resource.salary > 1)").unwrap(), r#""salary" > 1"#);
        assert_eq!(tr("true").unwrap(), "TRUE");
        assert_eq!(tr("true && false").unwrap(), "FALSE");
        assert_eq!(
            tr(r#"false || resource.salary > 1"#).unwrap(),
            r#""salary" > 1"#
        );
        assert_eq!(tr(r#""a" == "a""#).unwrap(), "TRUE");
    }

    #[test]
    fn sets_patterns_and_has() {
        assert_eq!(
            tr(r#"["North", "East"].contains(resource.district)"#).unwrap(),
            r#""district" IN ('North', 'East')"#
        );
        assert_eq!(tr("[].contains(resource.salary)").unwrap(), "FALSE");
        assert_eq!(
            tr(r#"resource.name like "Wang*""#).unwrap(),
            r#""name" LIKE (cedar) 'Wang*'"#
        );
        assert_eq!(
            tr("resource has salary").unwrap(),
            r#""salary" IS NOT NULL"#
        );
        assert_eq!(tr("resource has missing").unwrap(), "FALSE");
    }

    #[test]
    fn unless_clauses_are_negated() {
        let policy = cedar_policy::Policy::from_str(
            r#"permit (principal, action, resource) when { resource.salary > 1 } unless { resource.district == "X" };"#,
        )
        .unwrap();
        let pst = policy.to_pst().unwrap();
        let p = translate_clauses(pst.body().clauses(), &columns()).unwrap();
        assert_eq!(
            p.to_string(),
            r#"("salary" > 1 AND NOT ("district" = 'X'))"#
        );
        assert_eq!(
            p.columns().into_iter().collect::<Vec<_>>(),
            ["district", "salary"]
        );
    }

    #[test]
    fn what_is_not_understood_fails_closed() {
        for cond in [
            "resource.salary + 1 > 5",
            r#"if resource.salary > 1 then true else false"#,
            r#"resource.unknown_column == "x""#,
            r#"principal.district == resource.district"#,
            r#"resource.district.contains("x")"#,
            "resource.salary > 1 && context.x == 1",
            "1 < 2",
            r#"[resource.district].contains("North")"#,
        ] {
            assert!(tr(cond).is_err(), "{cond} should not translate");
        }
    }

    #[test]
    fn combining_permits_and_forbids() {
        let d = |v: &str| Predicate::Cmp {
            left: Operand::Column("district".into()),
            op: CmpOp::Eq,
            right: Operand::Literal(Value::String(v.into())),
        };
        assert_eq!(combine(vec![], vec![]), Predicate::Const(false));
        assert_eq!(
            combine(vec![Predicate::Const(true)], vec![]),
            Predicate::Const(true)
        );
        assert_eq!(
            combine(vec![Predicate::Const(true)], vec![Predicate::Const(true)]),
            Predicate::Const(false)
        );
        assert_eq!(
            combine(vec![d("N"), d("S")], vec![d("X")]).to_string(),
            r#"(("district" = 'N' OR "district" = 'S') AND NOT ("district" = 'X'))"#
        );
    }
}
