//! Loading a policy folder and answering requests with grants: [`PolicySet`] and its parts —
//! `load.rs` (files, validation, the generated schema, the lake's entities), `decide.rs` (grants
//! and their columns), `rows.rs` (row predicates from `read_row` residuals), `cache.rs` (slices,
//! per-action sets and their memos), `slice.rs` (which policies can apply to a user), `lint.rs`
//! (`policy check` warnings), `action.rs` (the actions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{
    pst, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PartialEntities, PartialEntityUid, PartialRequest, PolicyId, Request, RestrictedExpression,
    Schema, SchemaFragment, ValidationMode, Validator,
};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use crate::grant::{ColumnTreatment, Grant, RowPredicate};
use crate::lake_schema::{generate_schema, row_type, LakeDescription, TableDescription};
use crate::predicate::{self, Predicate};
use crate::{Mask, PolicyError};

mod action;
mod cache;
mod decide;
mod lint;
mod load;
mod rows;
mod slice;

use action::{Action, PerAction};
use cache::*;
use decide::*;
pub use load::DEFAULT_MIN_GROUP;
use load::*;
use slice::{Reaches, Requester};

/// (principal, scenario, table).
type GrantKey = (crate::Principal, String, String);

/// (action index, indices into `PolicySet::reach`): names an [`ActionSet`].
type ActionSetKey = (Action, Vec<u32>);

/// A validated set of schema, policies and entities: what every decision is made against.
/// Immutable; a reload builds a new one.
pub struct PolicySet {
    schema: Schema,
    schema_text: String,
    policies: cedar_policy::PolicySet,
    entities: Entities,
    /// The same entities for partial evaluation.
    partial_entities: PartialEntities,
    /// `@mask` of each policy that has one, parsed at load.
    masks: HashMap<String, Mask>,
    /// `@min_group` of each policy that has one, parsed at load.
    min_groups: HashMap<String, u64>,
    /// `@epsilon`/`@bounds` of each `aggregate` permit that has them, parsed at load.
    privacy: HashMap<String, crate::Privacy>,
    /// `@sample` of each `read_row` permit that has one, in hundredths of a percent.
    samples: HashMap<String, u16>,
    hash: String,
    authorizer: Authorizer,
    /// Grants by (user, scenario, table), with the second they were decided at.
    grants: std::sync::Mutex<Lru<GrantKey, (u64, std::sync::Arc<Grant>)>>,
    /// Every policy with the requests it can reach, in load order.
    reach: Reaches,
    /// The actions as entity uids, and their ancestors (`None`: not in the store).
    actions: PerAction<(EntityUid, Option<HashSet<EntityUid>>)>,
    /// `Lake::Column`, parsed once.
    column_type: EntityTypeName,
    /// Slices by (user, scenario): they do not depend on time.
    slices: std::sync::Mutex<Lru<(crate::Principal, String), std::sync::Arc<Slice>>>,
    /// Per-action policy sets by (action, indices into `reach`): slices share them.
    action_sets: std::sync::Mutex<Lru<ActionSetKey, std::sync::Arc<ActionSet>>>,
    /// Request contexts by scenario, with the time they were built for.
    contexts: std::sync::Mutex<Lru<String, (SystemTime, Context)>>,
    /// The last `context.now` built, with its time.
    now: std::sync::Mutex<Option<(SystemTime, RestrictedExpression)>>,
    /// Memo entries held by this set's [`ActionSet`]s.
    memo_budget: Budget,
    tables: BTreeMap<String, TableDescription>,
    /// The data products' names (`Lake::Product` entities).
    products: Vec<String>,
    /// What validated but looks wrong (`lint`): names of nothing, masks of the wrong type.
    warnings: Vec<String>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("hash", &self.hash)
            .field("policies", &self.policies.policies().count())
            .finish()
    }
}

/// What the entities say of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioInfo {
    /// The scenario id.
    pub id: String,
    /// Its `purpose` attribute, if it is a string.
    pub purpose: Option<String>,
    /// Its `max_rows` attribute: output review's limit on the rows one result may send.
    pub max_rows: Option<u64>,
    /// Its `epsilon_budget` attribute (a Cedar decimal): the ε each user may spend under it on
    /// differentially private releases. None: such releases are refused.
    pub epsilon_budget: Option<crate::Epsilon>,
    /// Its `max_calls_per_day` attribute: data product calls each user may make under it per
    /// day (a batch call counts one per subject). None: no limit.
    pub max_calls_per_day: Option<u64>,
}

impl PolicySet {
    /// The composed schema as Cedar schema text (generated part first).
    pub fn schema_text(&self) -> &str {
        &self.schema_text
    }

    /// SHA-256 of the schema, policies and entities: names this set in audit records.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Mistakes that validate but grant nothing or fail queries, each `file:line: message`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How many policies the set holds.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// The scenarios whose `products` attribute approves the data product `product`, by id.
    pub fn scenarios_approving(&self, product: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .entities
            .iter()
            .filter(|e| e.uid().type_name().to_string() == "Lake::Scenario")
            .filter(|e| match e.attr("products") {
                Some(Ok(cedar_policy::EvalResult::Set(set))) => set.iter().any(|v| {
                    matches!(v, cedar_policy::EvalResult::EntityUid(uid)
                        if uid.type_name().to_string() == "Lake::Product"
                            && uid.id().unescaped() == product)
                }),
                _ => false,
            })
            .map(|e| e.uid().id().unescaped().to_string())
            .collect();
        out.sort();
        out
    }

    /// The scenario `id`, if the entities declare it.
    pub fn scenario(&self, id: &str) -> Option<ScenarioInfo> {
        let uid = entity_uid("Lake::Scenario", id).ok()?;
        let entity = self.entities.get(&uid)?;
        let purpose = match entity.attr("purpose") {
            Some(Ok(cedar_policy::EvalResult::String(s))) => Some(s),
            _ => None,
        };
        let max_rows = match entity.attr("max_rows") {
            Some(Ok(cedar_policy::EvalResult::Long(n))) => Some(n.max(0) as u64),
            _ => None,
        };
        let epsilon_budget = match entity.attr("epsilon_budget") {
            Some(Ok(cedar_policy::EvalResult::ExtensionValue(v))) => decimal_epsilon(&v),
            _ => None,
        };
        let max_calls_per_day = match entity.attr("max_calls_per_day") {
            Some(Ok(cedar_policy::EvalResult::Long(n))) => Some(n.max(0) as u64),
            _ => None,
        };
        Some(ScenarioInfo {
            id: id.to_string(),
            purpose,
            max_rows,
            epsilon_budget,
            max_calls_per_day,
        })
    }
}

#[cfg(test)]
mod tests;
