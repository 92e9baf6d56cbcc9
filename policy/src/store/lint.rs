//! Warnings for policy admins (`lakegate policy check`, and the server's log at every load):
//! mistakes that validate but grant nothing, or make every query on a table fail.
//!
//! - an entity id that names no table, column or department of the lake (a misspelt
//!   `Lake::Column::"health.visits.diagnosys"` permits nothing, silently);
//! - a scenario whose `tables` name a table the lake does not have;
//! - a `@mask` that cannot apply to the type of a column its permit may reach (`@mask("year")`
//!   on a decimal): found by Cedar's type-aware partial evaluation of that permit alone, with
//!   the principal and the context unknown;
//! - a `@sample` permit that may reach a table without a subject key (it admits no row there).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    EntityTypeName, PartialEntities, PartialEntityUid, PartialRequest, PolicyId, Schema,
};

use super::{entity_uid, id_text, Source};
use crate::lake_schema::LakeDescription;
use crate::Mask;

/// Every lake entity id by type.
struct Known {
    departments: HashSet<String>,
    tables: HashSet<String>,
    columns: HashSet<String>,
}

impl Known {
    fn new(lake: &LakeDescription) -> Self {
        let mut k = Known {
            departments: HashSet::new(),
            tables: HashSet::new(),
            columns: HashSet::new(),
        };
        for t in &lake.tables {
            k.departments.insert(t.schema.clone());
            k.tables.insert(t.id());
            for c in &t.columns {
                k.columns.insert(format!("{}.{}", t.id(), c.name));
            }
        }
        k
    }

    /// What is wrong with `Type::"id"`, if it is a lake type and names nothing.
    fn problem(&self, ty: &str, id: &str) -> Option<&'static str> {
        let (set, what) = match ty {
            "Lake::Department" => (&self.departments, "department"),
            "Lake::Table" => (&self.tables, "table"),
            "Lake::Column" => (&self.columns, "column"),
            _ => return None,
        };
        (!set.contains(id)).then_some(what)
    }
}

/// Every `{"type": T, "id": I}` entity reference in a policy's or entity file's JSON.
fn entity_refs(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(serde_json::Value::String(t)), Some(serde_json::Value::String(i))) =
                (m.get("type"), m.get("id"))
            {
                out.push((t.clone(), i.clone()));
            }
            m.values().for_each(|v| entity_refs(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| entity_refs(v, out)),
        _ => {}
    }
}

/// `file:line` of the first occurrence of `needle` in `src`, else the file.
fn locate(src: &Source, needle: &str) -> String {
    src.locate(src.text.find(needle))
}

/// Whether `mask` can serve a column stored as `data_type` (Arrow's display of the type);
/// the same rule as the secure scan's.
pub(crate) fn mask_applies(mask: &Mask, data_type: &str) -> bool {
    let strings = matches!(data_type, "Utf8" | "LargeUtf8" | "Utf8View");
    let temporal = data_type == "Date32" || data_type.starts_with("Timestamp(");
    let numeric = ["Int", "UInt", "Float", "Decimal128("]
        .iter()
        .any(|p| data_type.starts_with(p));
    match mask {
        Mask::Hash | Mask::ShowFirst(_) | Mask::ShowLast(_) | Mask::Redact | Mask::Null => true,
        Mask::SqlLiterals | Mask::Literals => strings,
        Mask::Year => temporal,
        Mask::Round(_) => numeric,
    }
}

/// The inputs of the checks, from one load.
pub(super) struct Loaded<'a> {
    pub(super) policies: &'a cedar_policy::PolicySet,
    pub(super) origin: &'a HashMap<PolicyId, usize>,
    pub(super) sources: &'a [Source],
    pub(super) entities: &'a Source,
    pub(super) masks: &'a HashMap<String, Mask>,
    pub(super) lake: &'a LakeDescription,
    pub(super) schema: &'a Schema,
    pub(super) partial_entities: &'a PartialEntities,
    pub(super) read_masked: &'a cedar_policy::EntityUid,
    pub(super) samples: &'a HashMap<String, u16>,
    pub(super) read_row: &'a cedar_policy::EntityUid,
}

/// The warnings of one load, each `file:line: message`.
pub(super) fn warnings(l: &Loaded<'_>) -> Vec<String> {
    let known = Known::new(l.lake);
    let mut out = Vec::new();
    for p in l.policies.policies() {
        let id = id_text(p.id());
        let Some(src) = l.origin.get(p.id()).map(|&i| &l.sources[i]) else {
            continue;
        };
        let at = locate(src, &format!("@id(\"{id}\")"));
        let mut refs = Vec::new();
        if let Ok(json) = p.to_json() {
            entity_refs(&json, &mut refs);
        }
        refs.sort();
        refs.dedup();
        for (ty, eid) in refs {
            if let Some(what) = known.problem(&ty, &eid) {
                out.push(format!(
                    "{at}: policy `{id}` names {ty}::\"{eid}\", which is no {what} of the lake: it applies to nothing there"
                ));
            }
        }
        if let Some(mask) = l.masks.get(&id) {
            out.extend(mask_warnings(l, p, &id, mask, &at));
        }
        if l.samples.contains_key(&id) {
            out.extend(sample_warnings(l, p, &id, &at));
        }
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&l.entities.text) {
        let mut refs = Vec::new();
        entity_refs(&json, &mut refs);
        refs.sort();
        refs.dedup();
        for (ty, eid) in refs {
            if let Some(what) = known.problem(&ty, &eid) {
                let at = locate(l.entities, &format!("\"{eid}\""));
                out.push(format!(
                    "{at}: {ty}::\"{eid}\" is no {what} of the lake: a scenario or entity naming it grants nothing there"
                ));
            }
        }
    }
    out
}

/// One policy on its own, asked whether it may permit an action on a resource for some user
/// in some context (Cedar's type-aware partial evaluation with those unknown).
struct Alone<'a> {
    l: &'a Loaded<'a>,
    set: cedar_policy::PolicySet,
    user: EntityTypeName,
}

impl<'a> Alone<'a> {
    fn new(l: &'a Loaded<'a>, p: &cedar_policy::Policy) -> Option<Self> {
        let mut set = cedar_policy::PolicySet::new();
        set.add(p.clone()).ok()?;
        let user = EntityTypeName::from_str("Lake::User").ok()?;
        Some(Alone { l, set, user })
    }

    /// Whether the policy may permit `action` on `resource` (an error counts as no).
    fn reaches(&self, action: &cedar_policy::EntityUid, resource: PartialEntityUid) -> bool {
        let Ok(request) = PartialRequest::new(
            PartialEntityUid::new(self.user.clone(), None),
            action.clone(),
            resource,
            None,
            self.l.schema,
        ) else {
            return false;
        };
        let Ok(response) = self
            .set
            .tpe(&request, self.l.partial_entities, self.l.schema)
        else {
            return false;
        };
        response.true_permits().next().is_some() || response.residual_permits().next().is_some()
    }
}

/// A sampled permit that may reach a table without a subject key: no subjects to sample, so
/// it admits no row there (`policy-model.md` §8).
fn sample_warnings(l: &Loaded<'_>, p: &cedar_policy::Policy, id: &str, at: &str) -> Vec<String> {
    let Some(alone) = Alone::new(l, p) else {
        return Vec::new();
    };
    l.lake
        .tables
        .iter()
        .filter(|t| t.subject_key.is_none())
        .filter(|t| {
            crate::lake_schema::row_type(t)
                .and_then(|rows| EntityTypeName::from_str(&rows).ok())
                .is_some_and(|rows| alone.reaches(l.read_row, PartialEntityUid::new(rows, None)))
        })
        .map(|t| {
            format!(
                "{at}: policy `{id}`: @sample may reach {}, which has no subject key: it admits no row of it (set lakegate.subject_key or [lake.tables] subject_key)",
                t.id()
            )
        })
        .collect()
}

/// A mask permit that may reach a column it cannot mask.
fn mask_warnings(
    l: &Loaded<'_>,
    p: &cedar_policy::Policy,
    id: &str,
    mask: &Mask,
    at: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(alone) = Alone::new(l, p) else {
        return out;
    };
    for t in &l.lake.tables {
        for c in &t.columns {
            if mask_applies(mask, &c.data_type) {
                continue;
            }
            let Ok(column) = entity_uid("Lake::Column", &format!("{}.{}", t.id(), c.name)) else {
                continue;
            };
            if alone.reaches(l.read_masked, PartialEntityUid::from_concrete(column)) {
                out.push(format!(
                    "{at}: policy `{id}`: @mask(\"{mask}\") cannot mask {}.{} ({}), which this permit may reach: queries reading it under the permit fail",
                    t.id(),
                    c.name,
                    c.data_type
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_apply_as_the_secure_scan_applies_them() {
        assert!(mask_applies(&Mask::Year, "Date32"));
        assert!(mask_applies(
            &Mask::Year,
            "Timestamp(Microsecond, Some(\"UTC\"))"
        ));
        assert!(!mask_applies(&Mask::Year, "Decimal128(12, 2)"));
        assert!(mask_applies(&Mask::Round(100), "Decimal128(12, 2)"));
        assert!(!mask_applies(&Mask::Round(100), "Utf8"));
        assert!(mask_applies(&Mask::Hash, "Int64"));
        assert!(!mask_applies(&Mask::SqlLiterals, "Int64"));
    }
}
