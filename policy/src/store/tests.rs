use super::*;
use crate::lake_schema::{CedarType, ColumnDescription};
use crate::Mask;

fn hr_lake() -> LakeDescription {
    let col = |name: &str, ty: CedarType| ColumnDescription {
        name: name.into(),
        data_type: "Utf8".into(),
        cedar_type: Some(ty),
    };
    let table = |schema: &str, table: &str| TableDescription {
        schema: schema.into(),
        table: table.into(),
        subject_key: Some("id".into()),
        columns: vec![
            col("id", CedarType::Long),
            col("name", CedarType::String),
            col("district", CedarType::String),
            col("salary", CedarType::Long),
            col("id_card", CedarType::String),
            col("diagnosis", CedarType::String),
        ],
    };
    LakeDescription {
        tables: vec![table("hr", "employees"), table("hr", "payroll")],
        products: vec![],
    }
}

const ADMIN_SCHEMA: &str = r#"
namespace Lake {
  entity Org, Role;
  entity User in [Role, Org] { district: String };
  entity Scenario { purpose: String, operator: Org, expires: datetime, tables: Set<Table>, max_rows?: Long };
}
"#;

const POLICIES: &str = r#"
@id("scenario-scope")
permit (principal, action == Lake::Action::"query", resource)
when { resource in context.scenario.tables
       && principal in context.scenario.operator
       && context.now < context.scenario.expires };

@id("hr-columns")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"read_column", resource)
when { resource.table == Lake::Table::"hr.employees"
       && ["id", "name", "district", "salary"].contains(resource.name) };

@id("hr-id-card")
@mask("hash")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"read_masked",
        resource == Lake::Column::"hr.employees.id_card");

@id("hr-diagnosis")
@min_group("10")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"aggregate",
        resource == Lake::Column::"hr.employees.diagnosis");

@id("hr-own-district")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"read_row",
        resource is Lake::Rows::hr::employees)
when { resource.district == principal.district };
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "Lake::Org", "id": "acme"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Lake::Role", "id": "hr_analyst"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Lake::User", "id": "alice"}, "attrs": {"district": "North"},
   "parents": [{"type": "Lake::Role", "id": "hr_analyst"}, {"type": "Lake::Org", "id": "acme"}]},
  {"uid": {"type": "Lake::User", "id": "mallory"}, "attrs": {"district": "South"}, "parents": []},
  {"uid": {"type": "Lake::Scenario", "id": "hr-stats"},
   "attrs": {"purpose": "workforce statistics", "operator": {"__entity": {"type": "Lake::Org", "id": "acme"}},
             "expires": {"__extn": {"fn": "datetime", "arg": "2099-01-01"}},
             "tables": [{"__entity": {"type": "Lake::Table", "id": "hr.employees"}}]},
   "parents": []},
  {"uid": {"type": "Lake::Scenario", "id": "old"},
   "attrs": {"purpose": "expired", "operator": {"__entity": {"type": "Lake::Org", "id": "acme"}},
             "expires": {"__extn": {"fn": "datetime", "arg": "2020-01-01"}},
             "tables": [{"__entity": {"type": "Lake::Table", "id": "hr.employees"}}]},
   "parents": []}
]"#;

fn folder(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), ADMIN_SCHEMA).unwrap();
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    std::fs::write(dir.path().join("entities.json"), ENTITIES).unwrap();
    dir
}

#[test]
fn contract_example_validates_strictly() {
    let dir = folder(POLICIES);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    assert_eq!(set.policy_count(), 5);
    assert_eq!(set.hash().len(), 64);
    assert!(set.schema_text().contains("namespace Lake::Rows::hr"));
    assert_eq!(
        set.scenario("hr-stats").unwrap().purpose.as_deref(),
        Some("workforce statistics")
    );
    assert!(set.scenario("nope").is_none());
}

#[test]
fn grants_follow_the_contract_example() {
    let dir = folder(POLICIES);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    assert!(g.allowed);
    for c in ["id", "name", "district", "salary"] {
        assert_eq!(g.column(c), &ColumnTreatment::Raw, "{c}");
    }
    assert_eq!(g.column("id_card"), &ColumnTreatment::Masked(Mask::Hash));
    assert_eq!(
        g.column("diagnosis"),
        &ColumnTreatment::AggregateOnly {
            min_group: 10,
            privacy: None
        }
    );
    match &g.rows {
        RowPredicate::Where(p) => assert_eq!(p.to_string(), "\"district\" = 'North'"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        g.policy_ids(),
        [
            "hr-columns",
            "hr-diagnosis",
            "hr-id-card",
            "hr-own-district",
            "scenario-scope"
        ]
    );
}

#[test]
fn ids_with_quotes_and_backslashes_keep_their_masks_and_group_sizes() {
    // Cedar's `Display` of a policy id escapes `"` and `\`; grants name ids as written.
    let quoted = POLICIES
        .replace("@id(\"hr-id-card\")", r#"@id("card \"hashed\"")"#)
        .replace("@id(\"hr-diagnosis\")", r#"@id("diag\\nosis")"#)
        .replace("@min_group(\"10\")", "@min_group(\"7\")")
        .replace("@id(\"hr-own-district\")", r#"@id("own \"district\"")"#);
    assert!(quoted.contains(r#"@id("card \"hashed\"")"#));
    let dir = folder(&quoted);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    assert_eq!(g.column("id_card"), &ColumnTreatment::Masked(Mask::Hash));
    assert_eq!(
        g.column("diagnosis"),
        &ColumnTreatment::AggregateOnly {
            min_group: 7,
            privacy: None
        }
    );
    assert_eq!(
        g.policy_ids(),
        [
            r#"card "hashed""#,
            r#"diag\nosis"#,
            "hr-columns",
            r#"own "district""#,
            "scenario-scope"
        ]
    );
}

#[test]
fn forbid_residuals_are_subtracted_and_no_permit_means_no_rows() {
    let with_forbid = format!(
        "{POLICIES}\n@id(\"no-high-salaries\")\nforbid (principal, action == Lake::Action::\"read_row\", resource is Lake::Rows::hr::employees)\nwhen {{ resource.salary > 100000 && !(principal in Lake::Role::\"director\") }};\n"
    );
    let dir = folder(&with_forbid);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    match &g.rows {
        RowPredicate::Where(p) => assert_eq!(
            p.to_string(),
            "(\"district\" = 'North' AND NOT (NOT (\"salary\" <= 100000)))"
        ),
        other => panic!("{other:?}"),
    }

    // Without any read_row permit: no rows; without read_column etc.: hidden columns.
    let scope_only = POLICIES.split("@id(\"hr-columns\")").next().unwrap();
    let dir = folder(scope_only);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    assert!(g.allowed);
    assert_eq!(g.rows, RowPredicate::None);
    assert!(g.columns.values().all(|t| *t == ColumnTreatment::Hidden));
}

#[test]
fn sampled_permits_keep_a_keyed_share_of_subjects_and_nothing_without_a_subject_key() {
    let sampled = POLICIES.replace(
        "@id(\"hr-own-district\")",
        "@id(\"hr-own-district\")\n@sample(\"12.5\")",
    );
    let dir = folder(&sampled);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    assert_eq!(
        g.rows,
        RowPredicate::Where(Predicate::And(vec![
            Predicate::Cmp {
                left: predicate::Operand::Column("district".into()),
                op: predicate::CmpOp::Eq,
                right: predicate::Operand::Literal(predicate::Value::String("North".into())),
            },
            Predicate::Sample {
                column: "id".into(),
                basis_points: 1250,
            },
        ]))
    );
    match &g.rows {
        RowPredicate::Where(p) => assert_eq!(
            p.to_string(),
            "(\"district\" = 'North' AND \"id\" IN SAMPLE (12.5%))"
        ),
        other => panic!("{other:?}"),
    }

    // A permit without conditions: the sample alone.
    let unconditional = POLICIES.split("@id(\"hr-own-district\")").next().unwrap().to_string()
        + "@id(\"all-rows-sampled\")\n@sample(\"3\")\npermit (principal, action == Lake::Action::\"read_row\", resource is Lake::Rows::hr::employees);\n";
    let dir = folder(&unconditional);
    let mut lake = hr_lake();
    let set = PolicySet::load(dir.path(), &lake).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    assert_eq!(
        g.rows,
        RowPredicate::Where(Predicate::Sample {
            column: "id".into(),
            basis_points: 300,
        })
    );

    // No subject key: no subjects to sample, so no rows — and `policy check` says so.
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
    lake.tables[0].subject_key = None;
    let set = PolicySet::load(dir.path(), &lake).unwrap();
    let w = set.warnings().join("\n");
    assert!(
        w.contains(
            "policy `all-rows-sampled`: @sample may reach hr.employees, which has no subject key"
        ),
        "{w}"
    );
    assert!(!w.contains("hr.payroll"), "{w}");
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    assert!(g.allowed);
    assert_eq!(g.rows, RowPredicate::None);

    // A sampled forbid is refused: it would not do what it says.
    let text = format!(
        "{POLICIES}\n@id(\"bad\")\n@sample(\"10\")\nforbid (principal, action == Lake::Action::\"read_row\", resource);\n"
    );
    let err = PolicySet::load(folder(&text).path(), &hr_lake())
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs on permits of the read_row"), "{err}");
}

#[test]
fn bad_mask_and_min_group_annotations_are_refused_at_load() {
    for (annotation, action, expected) in [
        ("@mask(\"md5\")", "read_masked", "unknown mask `md5`"),
        ("@min_group(\"ten\")", "aggregate", "@min_group(\"ten\")"),
        ("", "read_masked", "names no mask"),
        ("@epsilon(\"0\")", "aggregate", "@epsilon(\"0\")"),
        ("@epsilon(\"1e-3\")", "aggregate", "@epsilon(\"1e-3\")"),
        ("@epsilon(\"1000\")", "aggregate", "at most 100"),
        ("@bounds(\"0,100\")", "aggregate", "@bounds needs @epsilon"),
        (
            "@epsilon(\"1\") @bounds(\"5,1\")",
            "aggregate",
            "@bounds(\"5,1\")",
        ),
        (
            "@epsilon(\"1\")",
            "query",
            "belong on permits of the aggregate",
        ),
        ("@sample(\"0\")", "read_row", "@sample(\"0\")"),
        ("@sample(\"100.01\")", "read_row", "@sample(\"100.01\")"),
        ("@sample(\"1.234\")", "read_row", "at most two decimals"),
        ("@sample(\"-5\")", "read_row", "@sample(\"-5\")"),
        ("@sample(\"ten\")", "read_row", "@sample(\"ten\")"),
        (
            "@sample(\"10\")",
            "read_column",
            "belongs on permits of the read_row",
        ),
    ] {
        let text = format!(
            "{POLICIES}\n@id(\"bad\")\n{annotation}\npermit (principal, action == Lake::Action::\"{action}\", resource);\n"
        );
        let dir = folder(&text);
        let err = PolicySet::load(dir.path(), &hr_lake())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy `bad`") && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn table_scope_is_decided_by_cedar() {
    let dir = folder(POLICIES);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let now = SystemTime::now();
    let g = set.grant("alice", "hr-stats", "hr.employees", now).unwrap();
    assert!(g.allowed);
    assert_eq!(g.table_policies, ["scenario-scope"]);
    // Not in the scenario's tables.
    assert!(
        !set.grant("alice", "hr-stats", "hr.payroll", now)
            .unwrap()
            .allowed
    );
    // Not in the operator org.
    assert!(
        !set.grant("mallory", "hr-stats", "hr.employees", now)
            .unwrap()
            .allowed
    );
    // Expired, unknown scenario, unknown table, unknown user.
    assert!(
        !set.grant("alice", "old", "hr.employees", now)
            .unwrap()
            .allowed
    );
    assert!(
        !set.grant("alice", "nope", "hr.employees", now)
            .unwrap()
            .allowed
    );
    assert!(
        !set.grant("alice", "hr-stats", "hr.nothing", now)
            .unwrap()
            .allowed
    );
    assert!(
        !set.grant("nobody", "hr-stats", "hr.employees", now)
            .unwrap()
            .allowed
    );
    // Ids with quotes cannot break out of the entity id.
    assert!(
        !set.grant("alice\"", "hr-stats\" || true", "hr.employees", now)
            .unwrap()
            .allowed
    );
}

#[test]
fn invalid_policy_is_refused_with_file_line_and_id() {
    let bad = format!(
        "{POLICIES}\n@id(\"typo\")\npermit (principal, action == Lake::Action::\"read_row\", resource is Lake::Rows::hr::employees)\nwhen {{ resource.distric == \"North\" }};\n"
    );
    let dir = folder(&bad);
    let err = PolicySet::load(dir.path(), &hr_lake())
        .unwrap_err()
        .to_string();
    assert!(err.contains("policies.cedar:"), "{err}");
    assert!(err.contains("policy `typo`"), "{err}");
    let line = err
        .split("policies.cedar:")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let line: usize = line.parse().unwrap();
    let expected = bad.lines().position(|l| l.contains("distric ==")).unwrap() + 1;
    assert_eq!(line, expected, "{err}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let dir = folder("permit (principal, action, resource) when { 1 + };");
    let err = PolicySet::load(dir.path(), &hr_lake())
        .unwrap_err()
        .to_string();
    assert!(err.contains("policies.cedar:1:"), "{err}");
}

#[test]
fn duplicate_ids_and_bad_entities_are_refused() {
    let dup = format!("{POLICIES}\n@id(\"hr-columns\")\npermit (principal, action, resource);");
    let dir = folder(&dup);
    let err = PolicySet::load(dir.path(), &hr_lake())
        .unwrap_err()
        .to_string();
    assert!(err.contains("used twice"), "{err}");

    let dir = folder(POLICIES);
    std::fs::write(
        dir.path().join("entities.json"),
        r#"[{"uid": {"type": "Lake::User", "id": "x"}, "attrs": {"district": 5}, "parents": []}]"#,
    )
    .unwrap();
    let err = PolicySet::load(dir.path(), &hr_lake())
        .unwrap_err()
        .to_string();
    assert!(err.contains("entities.json"), "{err}");
}

#[test]
fn grants_are_cached_per_second_and_exact() {
    let dir = folder(POLICIES);
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_900_000_000_500);
    let a = set.grant("alice", "hr-stats", "hr.employees", t).unwrap();
    let b = set
        .grant(
            "alice",
            "hr-stats",
            "hr.employees",
            t + std::time::Duration::from_millis(400),
        )
        .unwrap();
    assert_eq!(a, b);
    // A scenario expiring at a whole second: decided at whole seconds, before and after.
    let text = ENTITIES.replace("2099-01-01", "2030-03-17T17:46:40Z");
    let dir = folder(POLICIES);
    std::fs::write(dir.path().join("entities.json"), text).unwrap();
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
    let before = expiry - std::time::Duration::from_millis(1);
    assert!(
        set.grant("alice", "hr-stats", "hr.employees", before)
            .unwrap()
            .allowed
    );
    assert!(
        !set.grant("alice", "hr-stats", "hr.employees", expiry)
            .unwrap()
            .allowed
    );
}

/// Policies of every scope shape the slicer reads, and some it must not trust: scenario tests
/// first, not first, reversed, under `unless`; principal `==`, `in`, `is`, `is .. in`; action
/// `==`, `in [..]`, any; permits and forbids; rows and columns.
const MIXED: &str = r#"
@id("scope-any")
permit (principal, action == Lake::Action::"query", resource)
when { resource in context.scenario.tables && principal in context.scenario.operator };

@id("scope-old-only")
permit (principal in Lake::Org::"acme", action == Lake::Action::"query", resource)
when { context.scenario == Lake::Scenario::"old" };

@id("cols-hr-stats")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"read_column", resource)
when { context.scenario == Lake::Scenario::"hr-stats" && resource.name != "salary" };

@id("cols-reversed")
@mask("null")
permit (principal is Lake::User, action in [Lake::Action::"read_column", Lake::Action::"read_masked"], resource)
when { Lake::Scenario::"old" == context.scenario && resource.name == "salary" };

@id("mask-not-first")
@mask("show_last:4")
permit (principal, action == Lake::Action::"read_masked", resource)
when { resource.name == "id_card" && context.scenario == Lake::Scenario::"old" };

@id("mask-unless")
@mask("redact")
permit (principal is Lake::User in Lake::Org::"acme", action == Lake::Action::"read_masked", resource)
unless { context.scenario == Lake::Scenario::"old" };

@id("agg-alice")
@min_group("7")
permit (principal == Lake::User::"alice", action == Lake::Action::"aggregate", resource)
when { context.scenario == Lake::Scenario::"hr-stats" };

@id("agg-any-action")
@min_group("3")
permit (principal == Lake::User::"o'brien \"q\"", action, resource is Lake::Column)
when { resource.name == "diagnosis" };

@id("forbid-salary-old")
forbid (principal, action == Lake::Action::"read_column", resource)
when { context.scenario == Lake::Scenario::"old" && resource.name == "salary" };

@id("rows-hr-stats")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"read_row", resource is Lake::Rows::hr::employees)
when { context.scenario == Lake::Scenario::"hr-stats" && resource.district == principal.district };

@id("rows-old")
permit (principal in Lake::Org::"acme", action == Lake::Action::"read_row", resource is Lake::Rows::hr::employees)
when { context.scenario == Lake::Scenario::"old" && resource.salary < 5000 };

@id("mask-until-2030")
@mask("hash")
permit (principal in Lake::Org::"acme", action == Lake::Action::"read_masked", resource)
when { context.scenario == Lake::Scenario::"hr-stats" && resource.name == "salary"
       && context.now < datetime("2030-01-01") };

@id("rows-forbid-any")
forbid (principal, action == Lake::Action::"read_row", resource is Lake::Rows::hr::employees)
when { resource.salary > 100000 && context.scenario == Lake::Scenario::"hr-stats" };
"#;

#[test]
fn slices_decide_exactly_as_the_whole_set() {
    // bob's slices hold alice's policies; his district differs, which one row policy reads.
    let entities = ENTITIES.replacen(
        "[",
        r#"[{"uid": {"type": "Lake::User", "id": "o'brien \"q\""}, "attrs": {"district": "East"},
             "parents": [{"type": "Lake::Org", "id": "acme"}]},
            {"uid": {"type": "Lake::User", "id": "bob"}, "attrs": {"district": "South"},
             "parents": [{"type": "Lake::Role", "id": "hr_analyst"}, {"type": "Lake::Org", "id": "acme"}]},"#,
        1,
    );
    let dir = folder(MIXED);
    std::fs::write(dir.path().join("entities.json"), entities).unwrap();
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    // The whole set, never memoized: what Cedar says of every request.
    let whole = Slice {
        sets: PerAction::new(|_| {
            std::sync::Arc::new(ActionSet::new(
                set.policies.clone(),
                false,
                &Budget::default(),
            ))
        }),
        exact: false,
    };
    // Before and after `mask-until-2030` stops applying.
    let times = [
        SystemTime::now(),
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_925_000_000),
    ];
    // An unknown user is not memoized for others: ghost's column set is alice's (the slice
    // cannot settle `principal in Lake::Role::"hr_analyst"` for him), his answers are not hers.
    let ghost = entity_uid("Lake::User", "ghost").unwrap();
    let slice = set
        .slice(&ghost, &crate::Principal::User("ghost".into()), "hr-stats")
        .unwrap();
    let context = set.context("hr-stats", times[0]).unwrap();
    let ask = Ask {
        slice: &slice,
        principal: &ghost,
        scenario: "hr-stats",
        context: &context,
    };
    assert_eq!(
        set.column(&ask, "hr.employees", "name").unwrap(),
        (ColumnTreatment::Hidden, vec![])
    );
    let mut compared = 0;
    for now in times {
        for user in ["alice", "bob", "mallory", "o'brien \"q\"", "ghost"] {
            let principal = entity_uid("Lake::User", user).unwrap();
            for scenario in ["hr-stats", "old"] {
                let slice = set
                    .slice(
                        &principal,
                        &crate::Principal::User(user.to_string()),
                        scenario,
                    )
                    .unwrap();
                for desc in set.tables.values() {
                    let sliced = set
                        .decide_grant_with(&slice, desc, &principal, scenario, now)
                        .unwrap();
                    let full = set
                        .decide_grant_with(&whole, desc, &principal, scenario, now)
                        .unwrap();
                    assert_eq!(sliced, full, "{user} {scenario} {} {now:?}", desc.id());
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 40);

    // The slices are smaller than the set: other scenarios, actions and principals are out.
    let alice = entity_uid("Lake::User", "alice").unwrap();
    let ids = |s: &ActionSet| {
        let mut v: Vec<String> = s.policies.policies().map(|p| p.id().to_string()).collect();
        v.sort();
        v
    };
    let slice = set
        .slice(&alice, &crate::Principal::User("alice".into()), "hr-stats")
        .unwrap();
    assert_eq!(ids(&slice.sets[Action::Query]), ["scope-any"]);
    assert_eq!(ids(&slice.sets[Action::ReadColumn]), ["cols-hr-stats"]);
    assert_eq!(
        ids(&slice.sets[Action::ReadMasked]),
        ["mask-not-first", "mask-unless", "mask-until-2030"]
    );
    assert_eq!(ids(&slice.sets[Action::Aggregate]), ["agg-alice"]);
    assert_eq!(
        ids(&slice.sets[Action::ReadRow]),
        ["rows-forbid-any", "rows-hr-stats"]
    );
    let mallory = entity_uid("Lake::User", "mallory").unwrap();
    let slice = set
        .slice(&mallory, &crate::Principal::User("mallory".into()), "old")
        .unwrap();
    assert_eq!(ids(&slice.sets[Action::Query]), ["scope-any"]);
    assert_eq!(
        ids(&slice.sets[Action::ReadColumn]),
        ["cols-reversed", "forbid-salary-old"]
    );
    assert!(ids(&slice.sets[Action::Aggregate]).is_empty());
    // A user the store does not hold: no principal scope is trusted to exclude.
    let ghost = entity_uid("Lake::User", "ghost").unwrap();
    let slice = set
        .slice(&ghost, &crate::Principal::User("ghost".into()), "old")
        .unwrap();
    assert_eq!(
        ids(&slice.sets[Action::ReadRow]),
        ["rows-forbid-any", "rows-old"]
    );
    assert!(!slice.exact);

    // Slices with the same policies share their sets; a set whose policies read neither the
    // principal nor the time memoizes its decisions for the other users.
    let bob = entity_uid("Lake::User", "bob").unwrap();
    let a = set
        .slice(&alice, &crate::Principal::User("alice".into()), "hr-stats")
        .unwrap();
    let b = set
        .slice(&bob, &crate::Principal::User("bob".into()), "hr-stats")
        .unwrap();
    assert!(a.exact && b.exact);
    for action in Action::ALL {
        if action == Action::Aggregate {
            // `agg-alice` names alice.
            assert!(!std::sync::Arc::ptr_eq(&a.sets[action], &b.sets[action]));
        } else {
            assert!(std::sync::Arc::ptr_eq(&a.sets[action], &b.sets[action]));
        }
    }
    assert!(a.sets[Action::ReadColumn].shared);
    assert_eq!(
        a.sets[Action::ReadColumn]
            .decisions
            .get("hr-stats", "hr.employees.name"),
        Some((true, vec!["cols-hr-stats".to_string()]))
    );
    assert!(
        !a.sets[Action::Query].shared,
        "scope-any reads the principal"
    );
    assert!(
        !a.sets[Action::ReadMasked].shared,
        "mask-until-2030 reads the time"
    );
    assert!(
        !a.sets[Action::ReadRow].shared,
        "rows-hr-stats reads the principal"
    );
}

#[test]
fn policies_that_read_the_user_or_the_time_are_not_shared() {
    let shared = |cond: &str| {
        let text = format!("permit (principal in Lake::Org::\"acme\", action, resource) {cond};");
        slice::reads_only_scenario(&cedar_policy::Policy::from_str(&text).unwrap())
    };
    assert!(shared(""));
    assert!(shared("when { resource.name == \"x\" }"));
    assert!(shared("when { context.scenario == Lake::Scenario::\"s\" }"));
    assert!(shared("when { resource in context.scenario.tables }"));
    assert!(shared(
        "unless { context has scenario && action == Lake::Action::\"query\" }"
    ));
    assert!(!shared("when { principal.district == \"North\" }"));
    assert!(!shared(
        "when { resource.name == \"x\" } unless { principal in Lake::Org::\"b\" }"
    ));
    assert!(!shared("when { context.now < datetime(\"2030-01-01\") }"));
    assert!(!shared("when { context has now }"));
    assert!(!shared(
        "when { context == {\"scenario\": Lake::Scenario::\"s\"} }"
    ));
    assert!(!shared("when { context.scenario.operator == principal }"));
    assert!(!shared("when { [principal].contains(resource) }"));
    assert!(!shared(
        "when { {\"a\": context}.a.scenario == Lake::Scenario::\"s\" }"
    ));
}

#[test]
fn memos_stay_within_their_budget_and_return_it_when_dropped() {
    use std::sync::atomic::Ordering::Relaxed;
    let budget = Budget::default();
    budget.store(MEMO_BUDGET - 2, Relaxed);
    let a = Memo::new(budget.clone());
    let b = Memo::new(budget.clone());
    a.put("s", "t.c1", 1);
    a.put("s", "t.c1", 2); // an update takes no more budget
    b.put("s", "t.c2", 3);
    b.put("s", "t.c3", 4); // over budget: not kept
    assert_eq!((a.get("s", "t.c1"), b.get("s", "t.c2")), (Some(2), Some(3)));
    assert_eq!(b.get("s", "t.c3"), None);
    assert_eq!(budget.load(Relaxed), MEMO_BUDGET);
    drop(a);
    assert_eq!(budget.load(Relaxed), MEMO_BUDGET - 1);
    b.put("s", "t.c3", 4);
    assert_eq!(b.get("s", "t.c3"), Some(4));
}

#[test]
fn a_reloaded_set_warms_the_last_grants_with_its_own_policies() {
    let second = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
    let dir = folder(POLICIES);
    let old = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    old.grant("alice", "hr-stats", "hr.employees", second(1_900_000_000))
        .unwrap();
    old.grant("mallory", "hr-stats", "hr.employees", second(1_900_000_000))
        .unwrap();
    old.grant("alice", "hr-stats", "hr.payroll", second(1_900_000_001))
        .unwrap();
    let key = |u: &str, t: &str| {
        (
            crate::Principal::User(u.to_string()),
            "hr-stats".to_string(),
            t.to_string(),
        )
    };
    // Most recently used first, at most `limit`.
    assert_eq!(
        old.recent_grants(2),
        [key("alice", "hr.payroll"), key("mallory", "hr.employees")]
    );
    // A grant answered from the cache counts as used.
    old.grant("alice", "hr-stats", "hr.employees", second(1_900_000_000))
        .unwrap();
    assert_eq!(
        old.recent_grants(2),
        [key("alice", "hr.employees"), key("alice", "hr.payroll")]
    );

    // The admin changes a mask: the new set decides the old set's last grants with its own.
    let changed = POLICIES.replace("@mask(\"hash\")", "@mask(\"redact\")");
    std::fs::write(dir.path().join("policies.cedar"), changed).unwrap();
    let new = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let recent = old.recent_grants(10);
    assert_eq!(new.warm(&recent, second(1_900_000_002)), 3);
    let mut warmed = new.recent_grants(10);
    warmed.sort();
    let mut expected = recent.clone();
    expected.sort();
    assert_eq!(warmed, expected);
    let g = new
        .grant("alice", "hr-stats", "hr.employees", second(1_900_000_002))
        .unwrap();
    assert_eq!(g.column("id_card"), &ColumnTreatment::Masked(Mask::Redact));
    assert!(
        !new.grant("mallory", "hr-stats", "hr.employees", second(1_900_000_002))
            .unwrap()
            .allowed
    );
}

#[test]
fn epsilon_permits_release_with_privacy_and_scenarios_carry_budgets() {
    let text = POLICIES.replace(
        "@min_group(\"10\")",
        "@min_group(\"10\")\n@epsilon(\"0.5\")\n@bounds(\"0,100\")",
    ) + r#"
@id("second")
@epsilon("0.25")
@bounds("50,500")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"aggregate",
        resource == Lake::Column::"hr.employees.diagnosis");
"#;
    let dir = folder(&text);
    let schema = ADMIN_SCHEMA.replace(
        "max_rows?: Long",
        "max_rows?: Long, epsilon_budget?: decimal",
    );
    std::fs::write(dir.path().join("schema.cedarschema"), schema).unwrap();
    let entities = ENTITIES.replace(
        r#""purpose": "workforce statistics","#,
        r#""purpose": "workforce statistics", "epsilon_budget": {"__extn": {"fn": "decimal", "arg": "2.5"}},"#,
    );
    std::fs::write(dir.path().join(ENTITIES_FILE), entities).unwrap();
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let g = set
        .grant("alice", "hr-stats", "hr.employees", SystemTime::now())
        .unwrap();
    // The smallest ε of the determining permits, the narrowest bounds.
    assert_eq!(
        g.column("diagnosis"),
        &ColumnTreatment::AggregateOnly {
            min_group: 10,
            privacy: Some(crate::Privacy {
                epsilon: crate::Epsilon(250_000),
                bounds: Some(crate::Bounds {
                    lo: 50.0,
                    hi: 100.0
                }),
            }),
        }
    );
    assert_eq!(
        set.scenario("hr-stats").unwrap().epsilon_budget,
        Some(crate::Epsilon(2_500_000))
    );
    assert_eq!(set.scenario("old").unwrap().epsilon_budget, None);
}

#[test]
fn names_of_nothing_and_masks_of_the_wrong_type_are_warned_with_file_and_line() {
    let text = format!(
        "{POLICIES}
@id(\"typo-column\")
permit (principal, action == Lake::Action::\"read_column\", resource == Lake::Column::\"hr.employees.diagnosys\");

@id(\"typo-table\")
permit (principal, action == Lake::Action::\"query\", resource)
when {{ resource == Lake::Table::\"hr.employes\" }};

@id(\"year-on-names\")
@mask(\"year\")
permit (principal, action == Lake::Action::\"read_masked\", resource)
when {{ resource.name == \"name\" }};
"
    );
    let dir = folder(&text);
    let entities = ENTITIES.replace(
        r#""tables": [{"__entity": {"type": "Lake::Table", "id": "hr.employees"}}]},
   "parents": []},
  {"uid": {"type": "Lake::Scenario", "id": "old"},"#,
        r#""tables": [{"__entity": {"type": "Lake::Table", "id": "hr.payrol"}}]},
   "parents": []},
  {"uid": {"type": "Lake::Scenario", "id": "old"},"#,
    );
    assert_ne!(entities, ENTITIES);
    std::fs::write(dir.path().join(ENTITIES_FILE), entities).unwrap();
    let set = PolicySet::load(dir.path(), &hr_lake()).unwrap();
    let w = set.warnings().join("\n");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        w.contains(&format!(
            "policies.cedar:{}:",
            line_of("@id(\"typo-column\")")
        )) && w.contains("Lake::Column::\"hr.employees.diagnosys\", which is no column"),
        "{w}"
    );
    assert!(
        w.contains("Lake::Table::\"hr.employes\", which is no table"),
        "{w}"
    );
    assert!(
        w.contains("entities.json:") && w.contains("Lake::Table::\"hr.payrol\" is no table"),
        "{w}"
    );
    // Only the column the permit reaches: `name` in both tables, nothing else.
    assert!(
        w.contains("@mask(\"year\") cannot mask hr.employees.name (Utf8)"),
        "{w}"
    );
    assert!(!w.contains("cannot mask hr.employees.salary"), "{w}");
    assert_eq!(w.matches("cannot mask").count(), 2, "{w}");
    // The contract's example has nothing to warn about.
    let clean = PolicySet::load(folder(POLICIES).path(), &hr_lake()).unwrap();
    assert!(clean.warnings().is_empty(), "{:?}", clean.warnings());
}

/// A data product is a principal with grants of its own (definer rights), and users invoke it
/// under a scenario that approves it (`policy-model.md` §7).
#[test]
fn products_decide_with_their_own_grants_and_scenarios_approve_their_calls() {
    let dir = tempfile::tempdir().unwrap();
    let schema = ADMIN_SCHEMA.replace(
        "max_rows?: Long };",
        "max_rows?: Long, products?: Set<Product>, max_calls_per_day?: Long };",
    );
    std::fs::write(dir.path().join("schema.cedarschema"), schema).unwrap();
    let policies = format!(
        "{POLICIES}{}",
        r#"
@id("headcount-reads")
permit (principal == Lake::Product::"headcount",
        action in [Lake::Action::"query", Lake::Action::"read_column", Lake::Action::"read_row"],
        resource);

@id("users-only")
permit (principal is Lake::User, action == Lake::Action::"read_column", resource)
when { resource == Lake::Column::"hr.employees.id_card" };

@id("scenario-products")
permit (principal, action == Lake::Action::"invoke", resource)
when { context.scenario has products && resource in context.scenario.products
       && principal in context.scenario.operator && context.now < context.scenario.expires };
"#
    );
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    let entities = ENTITIES.replace(
        r#""attrs": {"purpose": "workforce statistics","#,
        r#""attrs": {"purpose": "workforce statistics", "max_calls_per_day": 100,
                     "products": [{"__entity": {"type": "Lake::Product", "id": "headcount"}}],"#,
    );
    std::fs::write(dir.path().join("entities.json"), entities).unwrap();
    let mut lake = hr_lake();
    lake.products = vec!["headcount".into(), "unapproved".into()];
    let set = PolicySet::load(dir.path(), &lake).unwrap();
    let now = SystemTime::now();

    let product = crate::Principal::Product("headcount".into());
    let g = set
        .grant_for(&product, "hr-stats", "hr.employees", now)
        .unwrap();
    assert!(g.allowed);
    // Its own grants: every column raw (the users' mask and k rule are not its), every row.
    assert_eq!(g.column("diagnosis"), &ColumnTreatment::Raw);
    assert_eq!(g.rows, RowPredicate::All);
    // A `principal is Lake::User` permit does not reach a product, and the other way round.
    assert_eq!(g.column_policies["id_card"], ["headcount-reads"]);
    let alice = set.grant("alice", "hr-stats", "hr.employees", now).unwrap();
    assert_eq!(alice.column("id_card"), &ColumnTreatment::Raw);
    assert_eq!(alice.column_policies["id_card"], ["users-only"]);
    assert_eq!(
        alice.column("diagnosis").to_string(),
        "aggregate-only, groups of at least 10 subjects"
    );
    // A product no permit names gets nothing.
    let other = crate::Principal::Product("unapproved".into());
    assert!(
        !set.grant_for(&other, "hr-stats", "hr.employees", now)
            .unwrap()
            .allowed
    );

    // Calls: approved by the scenario, for its operator, while it runs.
    assert_eq!(
        set.may_invoke("alice", "hr-stats", "headcount", now)
            .unwrap(),
        (true, vec!["scenario-products".to_string()])
    );
    assert!(
        !set.may_invoke("mallory", "hr-stats", "headcount", now)
            .unwrap()
            .0
    );
    assert!(
        !set.may_invoke("alice", "hr-stats", "unapproved", now)
            .unwrap()
            .0
    );
    assert!(!set.may_invoke("alice", "old", "headcount", now).unwrap().0);
    assert!(
        !set.may_invoke("alice", "hr-stats", "nothing", now)
            .unwrap()
            .0
    );
    assert!(!set.may_invoke("alice", "nope", "headcount", now).unwrap().0);
    assert_eq!(
        set.scenario("hr-stats").unwrap().max_calls_per_day,
        Some(100)
    );
    assert_eq!(set.scenarios_approving("headcount"), ["hr-stats"]);
    assert!(set.scenarios_approving("unapproved").is_empty());
    assert_eq!(set.scenario("old").unwrap().max_calls_per_day, None);
}
