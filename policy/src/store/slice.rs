//! Slicing a policy set to the policies that can apply to one (user, scenario).
//!
//! Cedar evaluates every policy of a set for every request. A deployment with many scenarios
//! has most policies written for other principals, other actions or other scenarios; they
//! evaluate to `false` and cost time. A policy is left out of a slice only when it is *certain*
//! to evaluate to `false` without an error for every request of that (user, scenario):
//!
//! - its scope names an action, a principal or a principal type the request cannot match (Cedar
//!   evaluates the scope first, and a scope never errors);
//! - or the leftmost conjunct of its first `when` clause is
//!   `context.scenario == Lake::Scenario::"X"` for another scenario X (evaluated right after the
//!   scope; `==` never errors and `&&` stops at the first `false`).
//!
//! A policy left out would have been `false`: not a reason, not an error, no residual. So the
//! decisions, their reasons and their diagnostics are those of the whole set — the equivalence
//! test in `tests.rs` checks that on a mixed set. Whatever the reader does not recognise keeps the
//! policy in.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{pst, EntityId, EntityTypeName, EntityUid, Policy};

use super::action::Action;

/// The Cedar type of scenarios.
const SCENARIO_TYPE: &str = "Lake::Scenario";

/// Every policy of a set with its [`Reach`], indexed by the scenario its first condition
/// requires, so that cutting a slice reads only the policies of its scenario and those that
/// require none (not all of a set with many scenarios).
pub(super) struct Reaches {
    /// In the set's order; indices into this name policies in slices.
    all: Vec<(Policy, Reach)>,
    /// Indices of the policies that require no scenario, ascending.
    any_scenario: Vec<u32>,
    /// Indices of the policies that require the scenario, ascending.
    by_scenario: HashMap<String, Vec<u32>>,
}

impl Reaches {
    /// Reads every policy of `policies`.
    pub(super) fn new(policies: &cedar_policy::PolicySet) -> Self {
        let all: Vec<(Policy, Reach)> = policies
            .policies()
            .map(|p| (p.clone(), Reach::of(p)))
            .collect();
        let mut any_scenario = Vec::new();
        let mut by_scenario: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, (_, reach)) in all.iter().enumerate() {
            match &reach.scenario {
                Some(s) => by_scenario.entry(s.clone()).or_default().push(i as u32),
                None => any_scenario.push(i as u32),
            }
        }
        Reaches {
            all,
            any_scenario,
            by_scenario,
        }
    }

    /// The policy at `index` and its reach.
    pub(super) fn get(&self, index: u32) -> &(Policy, Reach) {
        &self.all[index as usize]
    }

    /// The indices of the policies whose first condition does not rule `scenario` out,
    /// ascending (slices holding the same policies then have equal member lists).
    pub(super) fn for_scenario(&self, scenario: &str) -> Vec<u32> {
        let mut out = self.any_scenario.clone();
        out.extend(self.by_scenario.get(scenario).into_iter().flatten());
        out.sort_unstable();
        out
    }
}

/// Which requests a policy may apply to, read off its scope and its first condition.
#[derive(Debug, Clone)]
pub(super) struct Reach {
    /// The actions its scope names (`==` or `in [..]`); `None`: any action.
    actions: Option<Vec<EntityUid>>,
    principal: PrincipalReach,
    /// The scenario its first condition requires, if it requires one first.
    scenario: Option<String>,
    /// Its conditions read nothing of the request but the action, the resource and
    /// `context.scenario` (see [`reads_only_scenario`]).
    pub(super) shared: bool,
}

#[derive(Debug, Clone)]
enum PrincipalReach {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    /// `is T`, `is T in E`: reaches only principals of type T.
    Is {
        type_name: String,
        within: Option<EntityUid>,
    },
}

/// What a slice is cut for: the principal, its ancestors, the scenario.
pub(super) struct Requester<'a> {
    /// `Lake::User::"<id>"` or `Lake::Product::"<id>"`.
    pub user: &'a EntityUid,
    /// Its entity type's name (`Lake::User`, `Lake::Product`).
    pub type_name: &'a str,
    /// The user's ancestors in the entity store; `None` if the store does not hold the user
    /// (then no principal scope is trusted to exclude anything).
    pub ancestors: Option<HashSet<EntityUid>>,
    /// The scenario id.
    pub scenario: &'a str,
}

impl Reach {
    /// Reads a policy. Anything not understood widens the reach (keeps the policy in slices).
    pub(super) fn of(policy: &Policy) -> Reach {
        let Ok(pst) = policy.to_pst() else {
            return Reach::everything();
        };
        let body = pst.body();
        let actions = match &body.action {
            pst::ActionConstraint::Any => None,
            pst::ActionConstraint::Eq(a) => uid(a).map(|a| vec![a]),
            pst::ActionConstraint::In(list) => list.iter().map(uid).collect(),
        };
        let entity = |e: &pst::EntityOrSlot| match e {
            pst::EntityOrSlot::Entity(u) => uid(u),
            pst::EntityOrSlot::Slot(_) => None,
        };
        let principal = match &body.principal {
            pst::PrincipalConstraint::Any => PrincipalReach::Any,
            pst::PrincipalConstraint::Eq(e) => {
                entity(e).map_or(PrincipalReach::Any, PrincipalReach::Eq)
            }
            pst::PrincipalConstraint::In(e) => {
                entity(e).map_or(PrincipalReach::Any, PrincipalReach::In)
            }
            pst::PrincipalConstraint::Is(t) => PrincipalReach::Is {
                type_name: t.to_string(),
                within: None,
            },
            pst::PrincipalConstraint::IsIn(t, e) => PrincipalReach::Is {
                type_name: t.to_string(),
                within: entity(e),
            },
        };
        let scenario = match body.clauses().first() {
            Some(pst::Clause::When(e)) => required_scenario(e),
            _ => None,
        };
        Reach {
            actions,
            principal,
            scenario,
            shared: reads_only_scenario(policy),
        }
    }

    fn everything() -> Reach {
        Reach {
            actions: None,
            principal: PrincipalReach::Any,
            scenario: None,
            shared: false,
        }
    }

    /// Whether the policy may apply to `who` (any action).
    pub(super) fn reaches(&self, who: &Requester<'_>) -> bool {
        if let Some(s) = &self.scenario {
            if s != who.scenario {
                return false;
            }
        }
        let is_or_in =
            |e: &EntityUid| e == who.user || who.ancestors.as_ref().is_none_or(|a| a.contains(e));
        match &self.principal {
            PrincipalReach::Any => true,
            PrincipalReach::Eq(e) => e == who.user,
            PrincipalReach::In(e) => is_or_in(e),
            PrincipalReach::Is { type_name, within } => {
                type_name == who.type_name && within.as_ref().is_none_or(is_or_in)
            }
        }
    }

    /// Whether the policy may apply to `action`, whose ancestors are `action_ancestors`
    /// (`None`: unknown, then any `in` may hold).
    pub(super) fn reaches_action(
        &self,
        action: &EntityUid,
        action_ancestors: Option<&HashSet<EntityUid>>,
    ) -> bool {
        match &self.actions {
            None => true,
            Some(list) => list
                .iter()
                .any(|a| a == action || action_ancestors.is_none_or(|anc| anc.contains(a))),
        }
    }
}

/// Whether `policy`'s conditions read neither `principal` nor any of `context` but
/// `context.scenario`. Then, for a user the entity store holds, its value depends only on the
/// action, the resource and the scenario: its principal scope is settled by the slice (a slice
/// holds it only when the scope admits the user), and the time is not read. Every user whose
/// slice holds the same policies gets the same decisions, at any time.
///
/// Read off the policy's JSON form: every variable there is a `{"Var": ..}` node, so a
/// generic walk cannot miss a kind of expression. Anything unexpected counts as reading.
pub(super) fn reads_only_scenario(policy: &Policy) -> bool {
    match policy.to_json() {
        Ok(json) => match json.get("conditions") {
            Some(conditions @ serde_json::Value::Array(_)) => !reads_user_or_time(conditions),
            _ => false,
        },
        Err(_) => false,
    }
}

fn reads_user_or_time(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if let Some(Value::String(var)) = m.get("Var") {
                return var == "principal" || var == "context";
            }
            // `context.scenario` and `context has scenario`: the scenario, which keys memos.
            let is_scenario = |op: &str| {
                m.len() == 1
                    && m.get(op).and_then(Value::as_object).is_some_and(|inner| {
                        inner.len() == 2
                            && inner.get("attr").and_then(Value::as_str) == Some("scenario")
                            && inner.get("left").is_some_and(|l| {
                                l.as_object().is_some_and(|l| {
                                    l.len() == 1
                                        && l.get("Var").and_then(Value::as_str) == Some("context")
                                })
                            })
                    })
            };
            if is_scenario(".") || is_scenario("has") {
                return false;
            }
            m.values().any(reads_user_or_time)
        }
        Value::Array(a) => a.iter().any(reads_user_or_time),
        _ => false,
    }
}

/// `action` as an entity uid (`Lake::Action::"…"`).
pub(super) fn action_uid(action: Action) -> EntityUid {
    let ty = EntityTypeName::from_str("Lake::Action").expect("a valid type name");
    EntityUid::from_type_name_and_id(ty, EntityId::new(action.name()))
}

fn uid(u: &pst::EntityUID) -> Option<EntityUid> {
    let ty = EntityTypeName::from_str(&u.ty.to_string()).ok()?;
    Some(EntityUid::from_type_name_and_id(
        ty,
        EntityId::new(u.eid.as_str()),
    ))
}

/// `X` when the leftmost conjunct of `e` is `context.scenario == Lake::Scenario::"X"` (either
/// side).
fn required_scenario(e: &pst::Expr) -> Option<String> {
    let mut e = e;
    while let pst::Expr::BinaryOp {
        op: pst::BinaryOp::And,
        left,
        ..
    } = e
    {
        e = left;
    }
    let pst::Expr::BinaryOp {
        op: pst::BinaryOp::Eq,
        left,
        right,
    } = e
    else {
        return None;
    };
    let is_context_scenario = |x: &pst::Expr| {
        matches!(x, pst::Expr::GetAttr { expr, attr }
            if attr.as_str() == "scenario" && matches!(expr.as_ref(), pst::Expr::Var(pst::Var::Context)))
    };
    let scenario_literal = |x: &pst::Expr| match x {
        pst::Expr::Literal(pst::Literal::EntityUID(u)) if u.ty.to_string() == SCENARIO_TYPE => {
            Some(u.eid.to_string())
        }
        _ => None,
    };
    if is_context_scenario(left) {
        scenario_literal(right)
    } else if is_context_scenario(right) {
        scenario_literal(left)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_reads_its_own_policies_and_those_of_no_scenario_in_set_order() {
        let text = r#"
            permit (principal, action, resource) when { context.scenario == Lake::Scenario::"b" };
            permit (principal, action, resource);
            permit (principal, action, resource) when { context.scenario == Lake::Scenario::"a" };
            permit (principal, action, resource) when { context.scenario == Lake::Scenario::"b" && true };
            permit (principal, action, resource) when { true && context.scenario == Lake::Scenario::"a" };
        "#;
        let mut set = cedar_policy::PolicySet::new();
        for (i, p) in cedar_policy::PolicySet::from_str(text)
            .unwrap()
            .policies()
            .enumerate()
        {
            set.add(p.new_id(cedar_policy::PolicyId::new(format!("p{i}"))))
                .unwrap();
        }
        let reaches = Reaches::new(&set);
        let ids = |scenario: &str| -> Vec<String> {
            reaches
                .for_scenario(scenario)
                .into_iter()
                .map(|i| reaches.get(i).0.id().to_string())
                .collect()
        };
        // p4 names scenario a, but not first: it is read for every scenario.
        assert_eq!(ids("a"), ["p1", "p2", "p4"]);
        assert_eq!(ids("b"), ["p0", "p1", "p3", "p4"]);
        assert_eq!(ids("c"), ["p1", "p4"]);
    }
}
