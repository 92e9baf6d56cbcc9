//! What a user may do with one table under one scenario.

use std::collections::BTreeMap;

use crate::{Mask, Predicate, Privacy};

/// Whom a decision is for: a user, or a data product planning its own query with its own
/// rights (definer rights, `policy-model.md` §7).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// `Lake::User::"<name>"`.
    User(String),
    /// `Lake::Product::"<name>"`.
    Product(String),
}

impl Principal {
    /// The Cedar entity type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Principal::User(_) => "Lake::User",
            Principal::Product(_) => "Lake::Product",
        }
    }

    /// The entity id.
    pub fn id(&self) -> &str {
        match self {
            Principal::User(id) | Principal::Product(id) => id,
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::User(u) => write!(f, "user {u}"),
            Principal::Product(p) => write!(f, "product {p}"),
        }
    }
}

/// How one column is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnTreatment {
    /// Raw values (`read_column` permitted).
    Raw,
    /// The mask is applied inside the scan (`read_masked`, `@mask("...")`).
    Masked(Mask),
    /// Only as the bare argument of an allowed aggregate or a bare group key, in groups of at least
    /// `min_group` distinct subjects (`aggregate`, `@min_group("k")`), or with differential
    /// privacy (`@epsilon`, `@bounds`).
    AggregateOnly {
        /// The minimum number of distinct subjects per released group (with `privacy`: the
        /// least noisy threshold).
        min_group: u64,
        /// Released with noise instead of exact values, spending ε per query.
        privacy: Option<Privacy>,
    },
    /// The column does not exist for this user under this scenario.
    Hidden,
}

/// One wording of a treatment for `explain` and the audit trail alike.
impl std::fmt::Display for ColumnTreatment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnTreatment::Raw => write!(f, "raw"),
            ColumnTreatment::Masked(m) => write!(f, "masked: {m}"),
            ColumnTreatment::AggregateOnly {
                min_group,
                privacy: None,
            } => write!(f, "aggregate-only, groups of at least {min_group} subjects"),
            ColumnTreatment::AggregateOnly {
                min_group,
                privacy: Some(p),
            } => {
                write!(
                    f,
                    "aggregate-only, differential privacy: ε={} per query, noisy groups of at least {min_group}",
                    p.epsilon
                )?;
                match p.bounds {
                    Some(b) => write!(f, ", sums clamped to [{}, {}]", b.lo, b.hi),
                    None => write!(f, ", no sums (no @bounds)"),
                }
            }
            ColumnTreatment::Hidden => write!(f, "hidden"),
        }
    }
}

/// Which rows of a table the user may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowPredicate {
    /// Every row.
    All,
    /// No row.
    None,
    /// The rows where the predicate holds (on raw values; NULL counts as false).
    Where(Predicate),
}

/// The decision for one (user, scenario, table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Whether `query` is permitted: when false the table does not exist for the user.
    pub allowed: bool,
    /// Per column, by name. A column missing here is hidden.
    pub columns: BTreeMap<String, ColumnTreatment>,
    /// The rows the user may read.
    pub rows: RowPredicate,
    /// The `@id`s of the policies that determined `allowed`.
    pub table_policies: Vec<String>,
    /// Per column, the `@id`s of the policies that determined its treatment.
    pub column_policies: BTreeMap<String, Vec<String>>,
    /// The `@id`s of the `read_row` policies the row predicate came from.
    pub row_policies: Vec<String>,
}

impl Grant {
    /// The grant for a table the user may not query.
    pub fn denied(table_policies: Vec<String>) -> Self {
        Grant {
            allowed: false,
            columns: BTreeMap::new(),
            rows: RowPredicate::None,
            table_policies,
            column_policies: BTreeMap::new(),
            row_policies: Vec::new(),
        }
    }

    /// Every determining policy id, sorted, once each.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .table_policies
            .iter()
            .chain(self.column_policies.values().flatten())
            .chain(&self.row_policies)
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The treatment of `column`: hidden when the grant does not name it.
    pub fn column(&self, column: &str) -> &ColumnTreatment {
        self.columns.get(column).unwrap_or(&ColumnTreatment::Hidden)
    }
}
