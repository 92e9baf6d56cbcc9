//! The caches a policy set keeps: per-(user, scenario) slices of the policies, per-action sets with
//! memoized decisions, and their budgets.

use super::*;

// The caches below keep the most recently used entries: past their size, each new entry makes
// the least recently used one go, so no call pays for dropping many at once.

/// How many grants a policy set keeps.
pub(super) const GRANT_CACHE_ENTRIES: usize = 10_000;

/// How many (user, scenario) slices a policy set keeps.
pub(super) const SLICE_CACHE_ENTRIES: usize = 10_000;

/// How many distinct per-action policy sets a policy set keeps.
pub(super) const ACTION_SET_ENTRIES: usize = 10_000;

/// How many memoized answers all of a policy set's [`ActionSet`]s hold at most (a few hundred
/// bytes each); past it, decisions are made without being memoized until sets are dropped.
pub(super) const MEMO_BUDGET: usize = 250_000;

/// How many (scenario, time) request contexts a policy set keeps.
pub(super) const CONTEXT_ENTRIES: usize = 10_000;

/// The policies that can apply to one (user, scenario), per action (see [`slice`]).
pub(super) struct Slice {
    /// Slices with the same policies for an action share its set.
    pub(super) sets: PerAction<std::sync::Arc<ActionSet>>,
    /// The entity store holds the user, so the slice settled every principal scope it kept:
    /// shared sets may answer from their memos.
    pub(super) exact: bool,
}

/// The policies of one action that can apply to some (user, scenario).
pub(super) struct ActionSet {
    pub(super) policies: cedar_policy::PolicySet,
    /// No policy reads the principal or the time ([`slice::reads_only_scenario`]): for every
    /// user of an exact slice holding these policies, a decision depends only on the scenario
    /// and the resource, and is memoized by them.
    pub(super) shared: bool,
    /// Column and table decisions by (scenario, resource id).
    pub(super) decisions: Memo<(bool, Vec<String>)>,
    /// Row predicates by (scenario, table id).
    pub(super) rows: Memo<(RowPredicate, Vec<String>)>,
}

impl ActionSet {
    pub(super) fn new(policies: cedar_policy::PolicySet, shared: bool, budget: &Budget) -> Self {
        ActionSet {
            policies,
            shared,
            decisions: Memo::new(budget.clone()),
            rows: Memo::new(budget.clone()),
        }
    }
}

/// Memo entries in use out of [`MEMO_BUDGET`], shared by a policy set's memos.
pub(super) type Budget = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// Answers by scenario, then resource, within a budget shared with the other memos of the policy
/// set; an answer that does not fit is not kept (and decided again next time).
pub(super) struct Memo<T> {
    pub(super) entries: std::sync::Mutex<HashMap<String, HashMap<String, T>>>,
    pub(super) budget: Budget,
}

impl<T: Clone> Memo<T> {
    pub(super) fn new(budget: Budget) -> Self {
        Memo {
            entries: std::sync::Mutex::new(HashMap::new()),
            budget,
        }
    }

    pub(super) fn get(&self, scenario: &str, resource: &str) -> Option<T> {
        let entries = self.entries.lock().expect("memo poisoned");
        entries.get(scenario)?.get(resource).cloned()
    }

    pub(super) fn put(&self, scenario: &str, resource: &str, value: T) {
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

pub(super) type Lru<K, V> = lru::LruCache<K, V>;

/// An empty cache of at most `entries` entries.
pub(super) fn lru_cache<K: std::hash::Hash + Eq, V>(entries: usize) -> std::sync::Mutex<Lru<K, V>> {
    let entries = std::num::NonZeroUsize::new(entries).expect("a cache holds at least one entry");
    std::sync::Mutex::new(Lru::new(entries))
}

impl PolicySet {
    /// The policies that can apply to `user` under `scenario`, per action; cached.
    pub(super) fn slice(
        &self,
        principal: &EntityUid,
        who: &crate::Principal,
        scenario: &str,
    ) -> Result<std::sync::Arc<Slice>, PolicyError> {
        let key = (who.clone(), scenario.to_string());
        if let Some(s) = self.slices.lock().expect("slice cache poisoned").get(&key) {
            return Ok(s.clone());
        }
        let who = Requester {
            user: principal,
            type_name: who.type_name(),
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
    pub(super) fn action_set(
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
}
