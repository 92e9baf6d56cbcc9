//! Loading a policy folder and answering requests with grants.

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
mod lint;
mod slice;

use action::{Action, PerAction};
use slice::{Reaches, Requester};

/// (user, scenario, table).
type GrantKey = (String, String, String);

/// (action index, indices into `PolicySet::reach`): names an [`ActionSet`].
type ActionSetKey = (Action, Vec<u32>);

// The caches below keep the most recently used entries: past their size, each new entry makes
// the least recently used one go, so no call pays for dropping many at once.

/// How many grants a policy set keeps.
const GRANT_CACHE_ENTRIES: usize = 10_000;

/// How many (user, scenario) slices a policy set keeps.
const SLICE_CACHE_ENTRIES: usize = 10_000;

/// How many distinct per-action policy sets a policy set keeps.
const ACTION_SET_ENTRIES: usize = 10_000;

/// How many memoized answers all of a policy set's [`ActionSet`]s hold at most (a few hundred
/// bytes each); past it, decisions are made without being memoized until sets are dropped.
const MEMO_BUDGET: usize = 250_000;

/// How many (scenario, time) request contexts a policy set keeps.
const CONTEXT_ENTRIES: usize = 10_000;

/// The policies that can apply to one (user, scenario), per action (see [`slice`]).
struct Slice {
    /// Slices with the same policies for an action share its set.
    sets: PerAction<std::sync::Arc<ActionSet>>,
    /// The entity store holds the user, so the slice settled every principal scope it kept:
    /// shared sets may answer from their memos.
    exact: bool,
}

/// The policies of one action that can apply to some (user, scenario).
struct ActionSet {
    policies: cedar_policy::PolicySet,
    /// No policy reads the principal or the time ([`slice::reads_only_scenario`]): for every
    /// user of an exact slice holding these policies, a decision depends only on the scenario
    /// and the resource, and is memoized by them.
    shared: bool,
    /// Column and table decisions by (scenario, resource id).
    decisions: Memo<(bool, Vec<String>)>,
    /// Row predicates by (scenario, table id).
    rows: Memo<(RowPredicate, Vec<String>)>,
}

impl ActionSet {
    fn new(policies: cedar_policy::PolicySet, shared: bool, budget: &Budget) -> Self {
        ActionSet {
            policies,
            shared,
            decisions: Memo::new(budget.clone()),
            rows: Memo::new(budget.clone()),
        }
    }
}

/// Memo entries in use out of [`MEMO_BUDGET`], shared by a policy set's memos.
type Budget = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// Answers by scenario, then resource, within a budget shared with the other memos of the policy
/// set; an answer that does not fit is not kept (and decided again next time).
struct Memo<T> {
    entries: std::sync::Mutex<HashMap<String, HashMap<String, T>>>,
    budget: Budget,
}

impl<T: Clone> Memo<T> {
    fn new(budget: Budget) -> Self {
        Memo {
            entries: std::sync::Mutex::new(HashMap::new()),
            budget,
        }
    }

    fn get(&self, scenario: &str, resource: &str) -> Option<T> {
        let entries = self.entries.lock().expect("memo poisoned");
        entries.get(scenario)?.get(resource).cloned()
    }

    fn put(&self, scenario: &str, resource: &str, value: T) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut entries = self.entries.lock().expect("memo poisoned");
        if let Some(by_resource) = entries.get_mut(scenario) {
            if let Some(old) = by_resource.get_mut(resource) {
                *old = value;
                return;
            }
        }
        if self.budget.fetch_add(1, Relaxed) >= MEMO_BUDGET {
            self.budget.fetch_sub(1, Relaxed);
            return;
        }
        entries
            .entry(scenario.to_string())
            .or_default()
            .insert(resource.to_string(), value);
    }
}

impl<T> Drop for Memo<T> {
    fn drop(&mut self) {
        // Return what this memo held to the budget.
        let entries = self.entries.get_mut().unwrap_or_else(|p| p.into_inner());
        let held: usize = entries.values().map(HashMap::len).sum();
        self.budget
            .fetch_sub(held, std::sync::atomic::Ordering::Relaxed);
    }
}

type Lru<K, V> = lru::LruCache<K, V>;

/// An empty cache of at most `entries` entries.
fn lru_cache<K: std::hash::Hash + Eq, V>(entries: usize) -> std::sync::Mutex<Lru<K, V>> {
    let entries = std::num::NonZeroUsize::new(entries).expect("a cache holds at least one entry");
    std::sync::Mutex::new(Lru::new(entries))
}

/// The minimum group size of an `aggregate` permit without `@min_group`.
pub const DEFAULT_MIN_GROUP: u64 = 10;

/// The file of the policy folder that holds entities.
pub const ENTITIES_FILE: &str = "entities.json";

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
    slices: std::sync::Mutex<Lru<(String, String), std::sync::Arc<Slice>>>,
    /// Per-action policy sets by (action, indices into `reach`): slices share them.
    action_sets: std::sync::Mutex<Lru<ActionSetKey, std::sync::Arc<ActionSet>>>,
    /// Request contexts by scenario, with the time they were built for.
    contexts: std::sync::Mutex<Lru<String, (SystemTime, Context)>>,
    /// The last `context.now` built, with its time.
    now: std::sync::Mutex<Option<(SystemTime, RestrictedExpression)>>,
    /// Memo entries held by this set's [`ActionSet`]s.
    memo_budget: Budget,
    tables: BTreeMap<String, TableDescription>,
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
}

/// A file of the policy folder with its text, for locating errors.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: PathBuf) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Source { path, text })
    }

    /// `file:line:column` of a byte offset.
    fn locate(&self, offset: Option<usize>) -> String {
        let file = self.path.display();
        match offset {
            Some(off) if off <= self.text.len() => {
                let before = &self.text[..off];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("{file}:{line}:{col}")
            }
            _ => file.to_string(),
        }
    }

    /// An error for a diagnostic raised on this file.
    fn error(&self, d: &dyn Diagnostic, prefix: &str) -> PolicyError {
        let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
        PolicyError::Invalid {
            location: self.locate(offset),
            message: format!("{prefix}{}", describe(d)),
        }
    }
}

/// A diagnostic's message with its help, on one line.
fn describe(d: &dyn Diagnostic) -> String {
    let mut s = d.to_string();
    let mut src = std::error::Error::source(d);
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    if let Some(help) = d.help() {
        s.push_str(&format!(" (help: {help})"));
    }
    s
}

fn files_with_ext(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl PolicySet {
    /// Loads `dir` (`*.cedarschema`, `*.cedar`, `entities.json`), composes its schema with the
    /// one generated from `lake`, and validates everything strictly.
    pub fn load(dir: &Path, lake: &LakeDescription) -> Result<Self, PolicyError> {
        let mut hasher = Sha256::new();

        // Schema: generated fragment + the admin's fragments.
        let generated = generate_schema(lake);
        let (gen_fragment, _) =
            SchemaFragment::from_cedarschema_str(&generated).map_err(|e| PolicyError::Invalid {
                location: "<generated lake schema>".into(),
                message: format!(
                    "{}; a table or column name cannot be expressed in Cedar",
                    describe(&e)
                ),
            })?;
        let mut fragments = vec![gen_fragment];
        let mut schema_text = generated;
        let schema_files = files_with_ext(dir, "cedarschema")?;
        if schema_files.is_empty() {
            return Err(PolicyError::Invalid {
                location: dir.display().to_string(),
                message: "no *.cedarschema file: declare at least Lake::User and Lake::Scenario"
                    .into(),
            });
        }
        for path in schema_files {
            let src = Source::read(path)?;
            hasher.update(src.text.as_bytes());
            let (fragment, _) =
                SchemaFragment::from_cedarschema_str(&src.text).map_err(|e| src.error(&e, ""))?;
            fragments.push(fragment);
            schema_text.push_str(&format!("\n// From {}\n", src.path.display()));
            schema_text.push_str(&src.text);
        }
        let schema =
            Schema::from_schema_fragments(fragments).map_err(|e| PolicyError::Invalid {
                location: dir.display().to_string(),
                message: format!("the composed schema is invalid: {}", describe(&e)),
            })?;

        // Policies: ids are the @id annotations, else file#n.
        let mut policies = cedar_policy::PolicySet::new();
        let mut origin: HashMap<PolicyId, usize> = HashMap::new();
        let mut masks = HashMap::new();
        let mut min_groups = HashMap::new();
        let mut privacy = HashMap::new();
        let mut sources = Vec::new();
        for path in files_with_ext(dir, "cedar")? {
            let src = Source::read(path)?;
            hasher.update(src.text.as_bytes());
            let parsed =
                cedar_policy::PolicySet::from_str(&src.text).map_err(|e| src.error(&e, ""))?;
            if let Some(t) = parsed.templates().next() {
                return Err(PolicyError::Invalid {
                    location: src.locate(None),
                    message: format!(
                        "template {} is not supported: write a policy without ?principal/?resource slots",
                        t.id()
                    ),
                });
            }
            let file_name = src
                .path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            for (n, p) in parsed.policies().enumerate() {
                let id = p
                    .annotation("id")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{file_name}#{n}"));
                let pid = PolicyId::new(&id);
                if origin.contains_key(&pid) {
                    return Err(PolicyError::Invalid {
                        location: src.locate(None),
                        message: format!(
                            "policy id `{id}` is used twice: give each policy its own @id"
                        ),
                    });
                }
                if let Some(m) = p.annotation("mask") {
                    let mask = m.parse::<Mask>().map_err(|e| PolicyError::Invalid {
                        location: src.locate(None),
                        message: format!("policy `{id}`: @mask(\"{m}\"): {e}"),
                    })?;
                    masks.insert(id.clone(), mask);
                }
                let names = |action: &str| match p.action_constraint() {
                    cedar_policy::ActionConstraint::Eq(a) => a.id().unescaped() == action,
                    cedar_policy::ActionConstraint::In(a) => {
                        a.iter().any(|a| a.id().unescaped() == action)
                    }
                    cedar_policy::ActionConstraint::Any => false,
                };
                if names("read_masked")
                    && p.effect() == cedar_policy::Effect::Permit
                    && p.annotation("mask").is_none()
                {
                    return Err(PolicyError::Invalid {
                        location: src.locate(None),
                        message: format!(
                            "policy `{id}` permits read_masked but names no mask: add e.g. @mask(\"hash\")"
                        ),
                    });
                }
                // Noise is asked of `aggregate` permits only; anything else is a mistake, and
                // refusing it fails closed.
                let epsilon = p.annotation("epsilon");
                let bounds = p.annotation("bounds");
                if epsilon.is_some() || bounds.is_some() {
                    let invalid = |message: String| PolicyError::Invalid {
                        location: src.locate(None),
                        message: format!("policy `{id}`: {message}"),
                    };
                    if !names("aggregate") || p.effect() != cedar_policy::Effect::Permit {
                        return Err(invalid(
                            "@epsilon and @bounds belong on permits of the aggregate action".into(),
                        ));
                    }
                    let Some(e) = epsilon else {
                        return Err(invalid(
                            "@bounds needs @epsilon: bounds clamp sums released with differential privacy".into(),
                        ));
                    };
                    let epsilon = crate::Epsilon::parse(e)
                        .map_err(|why| invalid(format!("@epsilon(\"{e}\"): {why}")))?;
                    let bounds = bounds
                        .map(|b| {
                            crate::Bounds::parse(b)
                                .map_err(|why| invalid(format!("@bounds(\"{b}\"): {why}")))
                        })
                        .transpose()?;
                    privacy.insert(id.clone(), crate::Privacy { epsilon, bounds });
                }
                if let Some(k) = p.annotation("min_group") {
                    let k = k.parse::<u64>().ok().filter(|k| *k > 0).ok_or_else(|| {
                        PolicyError::Invalid {
                            location: src.locate(None),
                            message: format!(
                                "policy `{id}`: @min_group(\"{k}\") must be a positive whole number, e.g. @min_group(\"10\")"
                            ),
                        }
                    })?;
                    min_groups.insert(id.clone(), k);
                }
                policies
                    .add(p.new_id(pid.clone()))
                    .map_err(|e| PolicyError::Invalid {
                        location: src.locate(None),
                        message: describe(&e),
                    })?;
                origin.insert(pid, sources.len());
            }
            sources.push(src);
        }

        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<PolicyError> = result
                .validation_errors()
                .map(|e| {
                    let prefix = format!("policy `{}`: ", e.policy_id());
                    match origin.get(e.policy_id()) {
                        Some(&i) => sources[i].error(e, &prefix),
                        None => PolicyError::Invalid {
                            location: dir.display().to_string(),
                            message: format!("{prefix}{}", describe(e)),
                        },
                    }
                })
                .collect();
            return Err(if errors.len() == 1 {
                errors.into_iter().next().expect("one error")
            } else {
                PolicyError::Many(errors)
            });
        }

        // Entities: the admin's, validated against the schema, plus the lake's own.
        let entities_src = Source::read(dir.join(ENTITIES_FILE))?;
        hasher.update(entities_src.text.as_bytes());
        let admin_entities = Entities::from_json_str(&entities_src.text, Some(&schema))
            .map_err(|e| entities_src.error(&e, ""))?;
        let lake_entities = lake_entities(lake)?;
        let entities = admin_entities
            .add_entities(lake_entities, Some(&schema))
            .map_err(|e| PolicyError::Invalid {
                location: entities_src.locate(None),
                message: format!(
                    "{}; entities.json must not declare the lake's own Department, Table or Column entities",
                    describe(&e)
                ),
            })?;
        hasher.update(schema_text.as_bytes());
        let partial_entities =
            PartialEntities::from_concrete(entities.clone(), &schema).map_err(|e| {
                PolicyError::Invalid {
                    location: entities_src.locate(None),
                    message: describe(&e),
                }
            })?;

        let reach = Reaches::new(&policies);
        let actions = PerAction::new(|a| {
            let uid = slice::action_uid(a);
            let ancestors = entities.ancestors(&uid).map(|i| i.cloned().collect());
            (uid, ancestors)
        });

        let warnings = lint::warnings(&lint::Loaded {
            policies: &policies,
            origin: &origin,
            sources: &sources,
            entities: &entities_src,
            masks: &masks,
            lake,
            schema: &schema,
            partial_entities: &partial_entities,
            read_masked: &actions[Action::ReadMasked].0,
        });
        for w in &warnings {
            tracing::warn!("policy: {w}");
        }

        Ok(PolicySet {
            warnings,
            schema,
            schema_text,
            policies,
            entities,
            partial_entities,
            masks,
            min_groups,
            privacy,
            hash: hex::encode(hasher.finalize()),
            authorizer: Authorizer::new(),
            grants: lru_cache(GRANT_CACHE_ENTRIES),
            reach,
            actions,
            column_type: EntityTypeName::from_str("Lake::Column").expect("a valid type name"),
            slices: lru_cache(SLICE_CACHE_ENTRIES),
            action_sets: lru_cache(ACTION_SET_ENTRIES),
            contexts: lru_cache(CONTEXT_ENTRIES),
            now: std::sync::Mutex::new(None),
            memo_budget: Budget::default(),
            tables: lake.tables.iter().map(|t| (t.id(), t.clone())).collect(),
        })
    }

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
        Some(ScenarioInfo {
            id: id.to_string(),
            purpose,
            max_rows,
            epsilon_budget,
        })
    }

    /// The grant for `user` reading `table` (`schema.table`) under `scenario` at `now`
    /// (`policy-model.md` §5): table scope from `query`; per column `read_column` (raw), else
    /// `read_masked` (the most restrictive `@mask` of the determining permits), else `aggregate`
    /// (the largest `@min_group`, 10 if absent), else hidden; rows from `read_row` evaluated with
    /// the row unknown.
    ///
    /// Decisions are made at whole seconds (`context.now`) and cached per (user, scenario, table,
    /// second) for the life of this set, so a repeated request costs a map lookup (the grant is
    /// shared with the cache, not copied). Only the
    /// policies that can apply to the (user, scenario) are evaluated (a slice); a column or row
    /// decision of policies that read neither the principal nor the time is memoized per
    /// (scenario, resource) and serves every user whose slice holds the same policies.
    pub fn grant(
        &self,
        user: &str,
        scenario: &str,
        table: &str,
        now: SystemTime,
    ) -> Result<std::sync::Arc<Grant>, PolicyError> {
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key = (user.to_string(), scenario.to_string(), table.to_string());
        {
            let mut cache = self.grants.lock().expect("grant cache poisoned");
            if let Some((at, g)) = cache.get(&key) {
                if *at == second {
                    return Ok(g.clone());
                }
            }
        }
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
        let grant = std::sync::Arc::new(self.decide_grant(user, scenario, table, now)?);
        let evicted = self
            .grants
            .lock()
            .expect("grant cache poisoned")
            .push(key, (second, grant.clone()));
        // Dropped outside the lock: the least recently used grant, or this key's older one.
        drop(evicted);
        Ok(grant)
    }

    /// The (user, scenario, table) of the grants used most recently (decided or answered from
    /// the cache), newest first, at most `limit`: what [`Self::warm`] on the next policy set
    /// decides before it serves.
    pub fn recent_grants(&self, limit: usize) -> Vec<(String, String, String)> {
        let cache = self.grants.lock().expect("grant cache poisoned");
        // Most recently used first.
        cache.iter().take(limit).map(|(k, _)| k.clone()).collect()
    }

    /// Decides the grants of `requests` (user, scenario, table) at `now`, so that the slices and
    /// memos they fill answer the first queries after a reload; a request that errors is left
    /// to its query to report. Returns how many were decided.
    pub fn warm(&self, requests: &[(String, String, String)], now: SystemTime) -> usize {
        let mut decided = 0;
        for (user, scenario, table) in requests {
            if self.grant(user, scenario, table, now).is_ok() {
                decided += 1;
            }
        }
        decided
    }

    fn decide_grant(
        &self,
        user: &str,
        scenario: &str,
        table: &str,
        now: SystemTime,
    ) -> Result<Grant, PolicyError> {
        let Some(desc) = self.tables.get(table) else {
            return Ok(Grant::denied(vec![]));
        };
        let known = entity_uid("Lake::Scenario", scenario)
            .is_ok_and(|uid| self.entities.get(&uid).is_some());
        if !known {
            return Ok(Grant::denied(vec![]));
        }
        let principal = entity_uid("Lake::User", user)?;
        let slice = self.slice(&principal, user, scenario)?;
        self.decide_grant_with(&slice, desc, &principal, scenario, now)
    }

    /// The grant for `desc`, decided against `slice` (the whole set gives the same grant).
    fn decide_grant_with(
        &self,
        slice: &Slice,
        desc: &TableDescription,
        principal: &EntityUid,
        scenario: &str,
        now: SystemTime,
    ) -> Result<Grant, PolicyError> {
        let table = desc.id();
        let context = self.context(scenario, now)?;
        let ask = Ask {
            slice,
            principal,
            scenario,
            context: &context,
        };
        let table_uid = entity_uid("Lake::Table", &table)?;
        let (allowed, table_policies) = self.decide(&ask, Action::Query, table_uid)?;
        if !allowed {
            return Ok(Grant::denied(table_policies));
        }

        let mut columns = BTreeMap::new();
        let mut column_policies = BTreeMap::new();
        for c in &desc.columns {
            let (treatment, why) = self.column(&ask, &table, &c.name)?;
            columns.insert(c.name.clone(), treatment);
            column_policies.insert(c.name.clone(), why);
        }
        let (rows, row_policies) = self.rows(&ask, desc)?;
        Ok(Grant {
            allowed: true,
            columns,
            rows,
            table_policies,
            column_policies,
            row_policies,
        })
    }

    /// `read_column`, else `read_masked`, else `aggregate`, else hidden.
    fn column(
        &self,
        ask: &Ask<'_>,
        table: &str,
        column: &str,
    ) -> Result<(ColumnTreatment, Vec<String>), PolicyError> {
        let uid = EntityUid::from_type_name_and_id(
            self.column_type.clone(),
            EntityId::new(format!("{table}.{column}")),
        );
        if let (true, why) = self.decide(ask, Action::ReadColumn, uid.clone())? {
            return Ok((ColumnTreatment::Raw, why));
        }
        if let (true, why) = self.decide(ask, Action::ReadMasked, uid.clone())? {
            let masks = why
                .iter()
                .map(|id| {
                    self.masks.get(id).cloned().ok_or_else(|| {
                        PolicyError::Request(format!(
                            "policy `{id}` permits read_masked without a @mask annotation"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mask = Mask::most_restrictive(masks).expect("an allow has a reason");
            return Ok((ColumnTreatment::Masked(mask), why));
        }
        if let (true, why) = self.decide(ask, Action::Aggregate, uid)? {
            let k = why
                .iter()
                .map(|id| {
                    self.min_groups
                        .get(id)
                        .copied()
                        .unwrap_or(DEFAULT_MIN_GROUP)
                })
                .max()
                .unwrap_or(DEFAULT_MIN_GROUP);
            let privacy = self.privacy_of(&why, table, column)?;
            return Ok((
                ColumnTreatment::AggregateOnly {
                    min_group: k,
                    privacy,
                },
                why,
            ));
        }
        Ok((ColumnTreatment::Hidden, vec![]))
    }

    /// The differential privacy of an aggregate-only column, from its determining permits: if
    /// any asks for noise, the smallest ε of them, and the narrowest of their bounds (none
    /// overlapping: no decision, fail closed).
    fn privacy_of(
        &self,
        why: &[String],
        table: &str,
        column: &str,
    ) -> Result<Option<crate::Privacy>, PolicyError> {
        let asked: Vec<&crate::Privacy> =
            why.iter().filter_map(|id| self.privacy.get(id)).collect();
        let Some(epsilon) = asked.iter().map(|p| p.epsilon).min() else {
            return Ok(None);
        };
        let mut bounds: Option<crate::Bounds> = None;
        for b in asked.iter().filter_map(|p| p.bounds) {
            bounds = match bounds {
                None => Some(b),
                Some(a) => Some(a.intersect(b).ok_or_else(|| {
                    PolicyError::Request(format!(
                        "the @bounds of the permits releasing {table}.{column} do not overlap"
                    ))
                })?),
            };
        }
        Ok(Some(crate::Privacy { epsilon, bounds }))
    }

    /// One Cedar decision of `action` on `resource` against the slice's policies
    /// for that action: allowed or not, and the determining policy ids.
    fn decide(
        &self,
        ask: &Ask<'_>,
        action: Action,
        resource: EntityUid,
    ) -> Result<(bool, Vec<String>), PolicyError> {
        let set = &ask.slice.sets[action];
        if set.policies.is_empty() {
            // What Cedar answers for no policies: deny, no reasons, no errors.
            return Ok((false, vec![]));
        }
        let memo = ask.slice.exact && set.shared;
        if memo {
            if let Some(answer) = set.decisions.get(ask.scenario, resource.id().unescaped()) {
                return Ok(answer);
            }
        }
        // Not validated against the schema here: [`Self::context`] validated the context, and
        // the principal (a `Lake::User`) and resources (a `Lake::Table` for `query`, a
        // `Lake::Column` for the column actions) are of the types the lake schema gives them.
        let request = Request::new(
            ask.principal.clone(),
            self.actions[action].0.clone(),
            resource,
            ask.context.clone(),
            None,
        )
        .map_err(|e| PolicyError::Request(describe(&e)))?;
        let response = self
            .authorizer
            .is_authorized(&request, &set.policies, &self.entities);
        for e in response.diagnostics().errors() {
            // Cedar skips a policy that errors; the decision stands on the rest.
            let action = action.name();
            let principal = ask.principal;
            tracing::warn!(%principal, action, "policy evaluation error: {e}");
        }
        let mut ids: Vec<String> = response.diagnostics().reason().map(id_text).collect();
        // Cedar's reasons come from a hash set: sorted, records do not depend on its order.
        ids.sort();
        let answer = (response.decision() == Decision::Allow, ids);
        if let (true, Some(resource)) = (memo, request.resource()) {
            set.decisions
                .put(ask.scenario, resource.id().unescaped(), answer.clone());
        }
        Ok(answer)
    }

    /// The row predicate: `read_row` with the row unknown. Permit residuals are OR-ed, forbid
    /// residuals subtracted. A residual the translator does not understand fails closed: a
    /// permit then admits no row, a forbid excludes every row.
    fn rows(
        &self,
        ask: &Ask<'_>,
        desc: &TableDescription,
    ) -> Result<(RowPredicate, Vec<String>), PolicyError> {
        let set = &ask.slice.sets[Action::ReadRow];
        if set.policies.is_empty() {
            // No permit: no row, and nothing to name.
            return Ok((RowPredicate::None, vec![]));
        }
        let memo = ask.slice.exact && set.shared;
        let table = desc.id();
        if memo {
            if let Some(answer) = set.rows.get(ask.scenario, &table) {
                return Ok(answer);
            }
        }
        let answer = self.partially_evaluate_rows(&set.policies, desc, ask)?;
        if memo {
            set.rows.put(ask.scenario, &table, answer.clone());
        }
        Ok(answer)
    }

    fn partially_evaluate_rows(
        &self,
        policies: &cedar_policy::PolicySet,
        desc: &TableDescription,
        ask: &Ask<'_>,
    ) -> Result<(RowPredicate, Vec<String>), PolicyError> {
        let (principal, context) = (ask.principal, ask.context);
        let Some(row_type) = row_type(desc) else {
            tracing::warn!(table = %desc.id(), "table name is not a Cedar identifier: no rows");
            return Ok((RowPredicate::None, vec![]));
        };
        let request_err = |e: &dyn Diagnostic| PolicyError::Request(describe(e));
        let ty = EntityTypeName::from_str(&row_type).map_err(|e| request_err(&e))?;
        let request = PartialRequest::new(
            PartialEntityUid::from_concrete(principal.clone()),
            self.actions[Action::ReadRow].0.clone(),
            PartialEntityUid::new(ty, None),
            Some(context.clone()),
            &self.schema,
        )
        .map_err(|e| request_err(&e))?;
        let response = policies
            .tpe(&request, &self.partial_entities, &self.schema)
            .map_err(|e| request_err(&e))?;
        let columns: Vec<String> = desc.columns.iter().map(|c| c.name.clone()).collect();
        let mut ids = Vec::new();
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        for id in response.true_permits() {
            ids.push(id_text(id));
            permits.push(Predicate::Const(true));
        }
        for id in response.true_forbids() {
            ids.push(id_text(id));
            forbids.push(Predicate::Const(true));
        }
        for id in response.error_forbids() {
            tracing::warn!(policy = %id, table = %desc.id(), "forbid errors on read_row: no rows");
            ids.push(id_text(id));
            forbids.push(Predicate::Const(true));
        }
        let residual = |id: &PolicyId| -> Result<Predicate, predicate::Untranslatable> {
            let policy = response
                .get_policy(id)
                .ok_or_else(|| predicate::Untranslatable(format!("residual {id} is missing")))?;
            let pst = policy
                .to_pst()
                .map_err(|e| predicate::Untranslatable(e.to_string()))?;
            let body = pst.body();
            let scope_is_trivial = matches!(body.principal, pst::PrincipalConstraint::Any)
                && !matches!(body.action, pst::ActionConstraint::In(_))
                && match &body.resource {
                    pst::ResourceConstraint::Any => true,
                    pst::ResourceConstraint::Is(t) => t.to_string() == row_type,
                    _ => false,
                };
            if !scope_is_trivial {
                return Err(predicate::Untranslatable(format!(
                    "the scope of residual {id}"
                )));
            }
            predicate::translate_clauses(body.clauses(), &columns)
        };
        // Sorted, so that the predicate does not depend on the response's iteration order.
        fn sorted<'a>(ids: impl Iterator<Item = &'a PolicyId>) -> Vec<&'a PolicyId> {
            let mut ids: Vec<_> = ids.collect();
            ids.sort_by_key(|id| AsRef::<str>::as_ref(*id));
            ids
        }
        for id in sorted(response.residual_permits()) {
            ids.push(id_text(id));
            match residual(id) {
                Ok(p) => permits.push(p),
                Err(e) => {
                    tracing::warn!(policy = %id, table = %desc.id(), "{e}: the permit admits no row")
                }
            }
        }
        for id in sorted(response.residual_forbids()) {
            ids.push(id_text(id));
            match residual(id) {
                Ok(p) => forbids.push(p),
                Err(e) => {
                    tracing::warn!(policy = %id, table = %desc.id(), "{e}: the forbid excludes every row");
                    forbids.push(Predicate::Const(true));
                }
            }
        }
        ids.sort();
        let rows = match predicate::combine(permits, forbids) {
            Predicate::Const(true) => RowPredicate::All,
            Predicate::Const(false) => RowPredicate::None,
            p => RowPredicate::Where(p),
        };
        Ok((rows, ids))
    }

    /// The policies that can apply to `user` under `scenario`, per action; cached.
    fn slice(
        &self,
        principal: &EntityUid,
        user: &str,
        scenario: &str,
    ) -> Result<std::sync::Arc<Slice>, PolicyError> {
        let key = (user.to_string(), scenario.to_string());
        if let Some(s) = self.slices.lock().expect("slice cache poisoned").get(&key) {
            return Ok(s.clone());
        }
        let who = Requester {
            user: principal,
            ancestors: self
                .entities
                .ancestors(principal)
                .map(|a| a.cloned().collect()),
            scenario,
        };
        let reaching: Vec<u32> = self
            .reach
            .for_scenario(scenario)
            .into_iter()
            .filter(|&i| self.reach.get(i).1.reaches(&who))
            .collect();
        let sets = PerAction::try_new(|action| {
            let (uid, ancestors) = &self.actions[action];
            let members = reaching
                .iter()
                .copied()
                .filter(|&i| self.reach.get(i).1.reaches_action(uid, ancestors.as_ref()))
                .collect();
            self.action_set(action, members)
        })?;
        let slice = std::sync::Arc::new(Slice {
            sets,
            exact: who.ancestors.is_some(),
        });
        let evicted = self
            .slices
            .lock()
            .expect("slice cache poisoned")
            .push(key, slice.clone());
        drop(evicted);
        Ok(slice)
    }

    /// The set of the policies `members` (indices into `reach`) for `action`, shared with
    /// every slice that holds the same ones.
    fn action_set(
        &self,
        action: Action,
        members: Vec<u32>,
    ) -> Result<std::sync::Arc<ActionSet>, PolicyError> {
        let mut sets = self.action_sets.lock().expect("action sets poisoned");
        let key = (action, members);
        if let Some(set) = sets.get(&key) {
            return Ok(set.clone());
        }
        let mut policies = cedar_policy::PolicySet::new();
        let mut shared = true;
        for &i in &key.1 {
            let (policy, reach) = self.reach.get(i);
            policies
                .add(policy.clone())
                .map_err(|e| PolicyError::Request(describe(&e)))?;
            shared &= reach.shared;
        }
        let set = std::sync::Arc::new(ActionSet::new(policies, shared, &self.memo_budget));
        let evicted = sets.push(key, set.clone());
        drop(sets);
        drop(evicted);
        Ok(set)
    }

    /// `{scenario, now}`, validated against the schema's request context; the last one built
    /// per scenario is kept (building parses the datetime, which costs more than a decision).
    fn context(&self, scenario: &str, now: SystemTime) -> Result<Context, PolicyError> {
        if let Some((at, context)) = self
            .contexts
            .lock()
            .expect("context cache poisoned")
            .get(scenario)
        {
            if *at == now {
                return Ok(context.clone());
            }
        }
        let context = Context::from_pairs([
            (
                "scenario".to_string(),
                RestrictedExpression::new_entity_uid(entity_uid("Lake::Scenario", scenario)?),
            ),
            ("now".to_string(), self.datetime(now)),
        ])
        .map_err(|e| PolicyError::Request(describe(&e)))?;
        // Every action has the same context type; one check stands for all requests with it.
        context
            .validate(&self.schema, &self.actions[Action::Query].0)
            .map_err(|e| PolicyError::Request(describe(&e)))?;
        self.contexts
            .lock()
            .expect("context cache poisoned")
            .put(scenario.to_string(), (now, context.clone()));
        Ok(context)
    }

    /// `now` as a Cedar datetime; the last one is kept, as every scenario's context of the same
    /// second holds it.
    fn datetime(&self, now: SystemTime) -> RestrictedExpression {
        let mut last = self.now.lock().expect("datetime cache poisoned");
        if let Some((at, expr)) = &*last {
            if *at == now {
                return expr.clone();
            }
        }
        let at: chrono::DateTime<chrono::Utc> = now.into();
        let expr =
            RestrictedExpression::new_datetime(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        *last = Some((now, expr.clone()));
        expr
    }
}

/// One grant's requests: who asks, under which scenario, with which policies.
struct Ask<'a> {
    slice: &'a Slice,
    principal: &'a EntityUid,
    scenario: &'a str,
    context: &'a Context,
}

/// A policy id as written in its `@id` (`PolicyId`'s `Display` escapes quotes and backslashes,
/// and the `@mask`/`@min_group` maps are keyed by the id as written).
fn id_text(id: &PolicyId) -> String {
    AsRef::<str>::as_ref(id).to_string()
}

/// `Type::"id"` with any id text (built, not parsed: no escaping to get wrong).
fn entity_uid(ty: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let ty = EntityTypeName::from_str(ty)
        .map_err(|e| PolicyError::Request(format!("`{id}` as {ty}: {}", describe(&e))))?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// The lake's own entities: departments, tables and columns.
fn lake_entities(lake: &LakeDescription) -> Result<Vec<Entity>, PolicyError> {
    let bad = |e: &dyn Diagnostic| PolicyError::Request(describe(e));
    let mut out = Vec::new();
    let mut departments = HashSet::new();
    for t in &lake.tables {
        let dept = entity_uid("Lake::Department", &t.schema)?;
        if departments.insert(t.schema.clone()) {
            out.push(Entity::new_no_attrs(dept.clone(), HashSet::new()));
        }
        let table = entity_uid("Lake::Table", &t.id())?;
        let mut attrs = HashMap::from([(
            "department".to_string(),
            RestrictedExpression::new_entity_uid(dept.clone()),
        )]);
        if let Some(k) = &t.subject_key {
            attrs.insert(
                "subject_key".into(),
                RestrictedExpression::new_string(k.clone()),
            );
        }
        out.push(Entity::new(table.clone(), attrs, HashSet::from([dept])).map_err(|e| bad(&e))?);
        for c in &t.columns {
            let uid = entity_uid("Lake::Column", &format!("{}.{}", t.id(), c.name))?;
            let attrs = HashMap::from([
                (
                    "table".to_string(),
                    RestrictedExpression::new_entity_uid(table.clone()),
                ),
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(c.name.clone()),
                ),
                (
                    "data_type".to_string(),
                    RestrictedExpression::new_string(c.data_type.clone()),
                ),
            ]);
            out.push(Entity::new(uid, attrs, HashSet::from([table.clone()])).map_err(|e| bad(&e))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

/// A Cedar decimal's text (`decimal("1.5")` or `1.5`) as ε; negative or malformed: none (fail
/// closed: no budget).
fn decimal_epsilon(text: &str) -> Option<crate::Epsilon> {
    let t = text.trim();
    let t = t
        .strip_prefix("decimal(\"")
        .and_then(|t| t.strip_suffix("\")"))
        .unwrap_or(t);
    crate::Epsilon::parse_amount(t).ok()
}
