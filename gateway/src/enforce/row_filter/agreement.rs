//! Property: for random `read_row` conditions (permit and forbid) and random rows, the rows the
//! translated predicate keeps inside the scan are exactly the rows Cedar itself allows, deciding
//! each row concretely. The path under test is the one a query takes: the policy store's partial
//! evaluation (the row unknown), the residual's translation and this module's expression,
//! coerced and evaluated by DataFusion over the column types the catalog maps to Cedar types.

use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, Request, Schema, SchemaFragment,
};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use policy::{CedarType, ColumnDescription, LakeDescription, RowPredicate, TableDescription};
use proptest::prelude::*;

const ADMIN_SCHEMA: &str = r#"
namespace Lake {
  entity Org;
  entity User in [Org] { district: String };
  entity Scenario { purpose: String, operator: Org, expires: datetime, tables: Set<Table> };
}
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "Lake::Org", "id": "acme"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Lake::User", "id": "alice"}, "attrs": {"district": "North"},
   "parents": [{"type": "Lake::Org", "id": "acme"}]},
  {"uid": {"type": "Lake::Scenario", "id": "s1"},
   "attrs": {"purpose": "p", "operator": {"__entity": {"type": "Lake::Org", "id": "acme"}},
             "expires": {"__extn": {"fn": "datetime", "arg": "2099-01-01"}},
             "tables": [{"__entity": {"type": "Lake::Table", "id": "t.r"}}]},
   "parents": []}
]"#;

/// 2024-12-31T00:00:00Z: rows and literals fall within three days of it.
const START: i64 = 1_735_603_200;

/// Strings rows hold and conditions name: LIKE's and Cedar's special characters included.
const STRINGS: [&str; 10] = ["", "a", "b", "ab", "North", "a*b", "%", "_", "é", "a%b"];

fn lake() -> LakeDescription {
    let col = |name: &str, ty: Option<CedarType>| ColumnDescription {
        name: name.into(),
        data_type: "test".into(),
        cedar_type: ty,
    };
    LakeDescription {
        tables: vec![TableDescription {
            schema: "t".into(),
            table: "r".into(),
            subject_key: None,
            columns: vec![
                col("id", None),
                col("n", Some(CedarType::Long)),
                col("s", Some(CedarType::String)),
                col("b", Some(CedarType::Bool)),
                col("d", Some(CedarType::Decimal)),
                col("t", Some(CedarType::Datetime)),
                col("dt", Some(CedarType::Datetime)),
            ],
        }],
        products: vec![],
    }
}

#[derive(Debug, Clone)]
struct Row {
    n: i64,
    s: &'static str,
    b: bool,
    /// Ten-thousandths.
    d: i64,
    /// Seconds after [`START`].
    t: i64,
    /// Days after [`START`].
    dt: i64,
}

fn row() -> impl Strategy<Value = Row> {
    (
        -3i64..=3,
        prop::sample::select(&STRINGS[..]),
        any::<bool>(),
        -20_000i64..=20_000,
        (0i64..72, prop::sample::select(vec![0i64, 1800, 3599])),
        0i64..3,
    )
        .prop_map(|(n, s, b, d, (h, extra), dt)| Row {
            n,
            s,
            b,
            d: d / 2500 * 2500 + (d % 3),
            t: h * 3600 + extra,
            dt,
        })
}

fn cedar_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Cedar decimal literal near the rows' values, with one to four fractional digits.
fn decimal() -> impl Strategy<Value = String> {
    (-20_000i64..=20_000, 1u32..=4).prop_map(|(v, digits)| {
        let unit = 10i64.pow(4 - digits);
        let v = v / unit * unit;
        let (sign, abs) = if v < 0 { ("-", -v) } else { ("", v) };
        let frac = (abs % 10_000) / unit;
        format!(
            "{sign}{}.{frac:0width$}",
            abs / 10_000,
            width = digits as usize
        )
    })
}

/// A Cedar datetime literal in one of its forms: a date, UTC, milliseconds, an offset.
fn datetime() -> impl Strategy<Value = String> {
    (
        0i64..72,
        prop::sample::select(vec![0i64, 1800, 3599]),
        0u8..4,
    )
        .prop_map(|(h, extra, form)| {
            let at: DateTime<Utc> = Utc.timestamp_opt(START + h * 3600 + extra, 0).unwrap();
            match form {
                0 => at.format("%Y-%m-%d").to_string(),
                1 => at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                2 => at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                _ => {
                    let east = FixedOffset::east_opt(8 * 3600).unwrap();
                    at.with_timezone(&east)
                        .format("%Y-%m-%dT%H:%M:%S%z")
                        .to_string()
                }
            }
        })
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "é", "%", "_", "*", "\\*"]),
        0..4,
    )
    .prop_map(|parts| format!("\"{}\"", parts.concat()))
}

fn cmp() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="])
}

/// One condition on the row, well typed.
fn atom() -> impl Strategy<Value = String> {
    let string = || prop::sample::select(&STRINGS[..]).prop_map(cedar_string);
    prop_oneof![
        (cmp(), -3i64..=3).prop_map(|(op, k)| format!("resource.n {op} {k}")),
        (cmp(), -3i64..=3).prop_map(|(op, k)| format!("{k} {op} resource.n")),
        (-3i64..=3, -3i64..=3).prop_map(|(a, b)| format!("[{a}, {b}].contains(resource.n)")),
        (prop::sample::select(vec!["==", "!="]), string())
            .prop_map(|(op, s)| format!("resource.s {op} {s}")),
        string().prop_map(|s| format!("{s} == resource.s")),
        pattern().prop_map(|p| format!("resource.s like {p}")),
        (string(), string()).prop_map(|(a, b)| format!("[{a}, {b}].contains(resource.s)")),
        Just("resource.s == principal.district".to_string()),
        Just("resource has s".to_string()),
        Just("resource.b".to_string()),
        any::<bool>().prop_map(|v| format!("resource.b == {v}")),
        (
            prop::sample::select(vec![
                "lessThan",
                "lessThanOrEqual",
                "greaterThan",
                "greaterThanOrEqual"
            ]),
            decimal()
        )
            .prop_map(|(m, x)| format!("resource.d.{m}(decimal(\"{x}\"))")),
        (prop::sample::select(vec!["==", "!="]), decimal())
            .prop_map(|(op, x)| format!("resource.d {op} decimal(\"{x}\")")),
        (prop::sample::select(vec!["t", "dt"]), cmp(), datetime())
            .prop_map(|(c, op, x)| format!("resource.{c} {op} datetime(\"{x}\")")),
        any::<bool>().prop_map(|v| v.to_string()),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    atom().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
}

fn policies(permit: &str, forbid: Option<&str>) -> String {
    let mut text = format!(
        r#"
@id("scope")
permit (principal, action == Lake::Action::"query", resource)
when {{ resource in context.scenario.tables }};
@id("columns")
permit (principal, action == Lake::Action::"read_column", resource);
@id("rows")
permit (principal, action == Lake::Action::"read_row", resource is Lake::Rows::t::r)
when {{ {permit} }};
"#
    );
    if let Some(forbid) = forbid {
        text.push_str(&format!(
            "@id(\"not-these\")\nforbid (principal, action == Lake::Action::\"read_row\", \
             resource is Lake::Rows::t::r)\nwhen {{ {forbid} }};\n"
        ));
    }
    text
}

/// Cedar's own decision for each row, the row a concrete entity.
fn cedar_allows(text: &str, rows: &[Row]) -> Vec<bool> {
    let fragment = |text: &str| SchemaFragment::from_cedarschema_str(text).unwrap().0;
    let schema = Schema::from_schema_fragments([
        fragment(&policy::generate_schema(&lake())),
        fragment(ADMIN_SCHEMA),
    ])
    .unwrap();
    let set = cedar_policy::PolicySet::from_str(text).unwrap();
    let principal = EntityUid::from_str(r#"Lake::User::"alice""#).unwrap();
    let action = EntityUid::from_str(r#"Lake::Action::"read_row""#).unwrap();
    let context = Context::from_json_value(
        serde_json::json!({
            "scenario": {"__entity": {"type": "Lake::Scenario", "id": "s1"}},
            "now": {"__extn": {"fn": "datetime", "arg": "2026-01-01"}},
        }),
        Some((&schema, &action)),
    )
    .unwrap();
    rows.iter()
        .map(|r| {
            let mut entities: serde_json::Value = serde_json::from_str(ENTITIES).unwrap();
            let t = Utc.timestamp_opt(START + r.t, 0).unwrap();
            let dt = Utc.timestamp_opt(START + r.dt * 86_400, 0).unwrap();
            entities.as_array_mut().unwrap().push(serde_json::json!({
                "uid": {"type": "Lake::Rows::t::r", "id": "row"},
                "attrs": {
                    "n": r.n,
                    "s": r.s,
                    "b": r.b,
                    "d": {"__extn": {"fn": "decimal", "arg": decimal_text(r.d)}},
                    "t": {"__extn": {"fn": "datetime",
                                     "arg": t.format("%Y-%m-%dT%H:%M:%SZ").to_string()}},
                    "dt": {"__extn": {"fn": "datetime", "arg": dt.format("%Y-%m-%d").to_string()}},
                },
                "parents": []
            }));
            let entities = Entities::from_json_value(entities, Some(&schema)).unwrap();
            let resource = EntityUid::from_str(r#"Lake::Rows::t::r::"row""#).unwrap();
            let request = Request::new(
                principal.clone(),
                action.clone(),
                resource,
                context.clone(),
                Some(&schema),
            )
            .unwrap();
            Authorizer::new()
                .is_authorized(&request, &set, &entities)
                .decision()
                == Decision::Allow
        })
        .collect()
}

fn decimal_text(v: i64) -> String {
    let (sign, abs) = if v < 0 { ("-", -v) } else { ("", v) };
    format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000)
}

/// The rows as the catalog would give them to the scan.
fn batch(rows: &[Row]) -> RecordBatch {
    let columns: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new("id", DataType::Int64, false),
            Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
        ),
        (
            Field::new("n", DataType::Int64, true),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n))),
        ),
        (
            Field::new("s", DataType::Utf8, true),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.s))),
        ),
        (
            Field::new("b", DataType::Boolean, true),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.b)))),
        ),
        (
            Field::new("d", DataType::Decimal128(10, 4), true),
            Arc::new(
                Decimal128Array::from_iter_values(rows.iter().map(|r| r.d as i128))
                    .with_precision_and_scale(10, 4)
                    .unwrap(),
            ),
        ),
        (
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| (START + r.t) * 1_000_000),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            Field::new("dt", DataType::Date32, true),
            Arc::new(Date32Array::from_iter_values(
                rows.iter().map(|r| (START / 86_400 + r.dt) as i32),
            )),
        ),
    ];
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays).unwrap()
}

/// The rows the scan keeps: the grant's predicate as [`super::to_expr`] writes it.
fn scan_keeps(runtime: &tokio::runtime::Runtime, rows: &[Row], grant: &RowPredicate) -> Vec<bool> {
    let predicate = match grant {
        RowPredicate::All => return vec![true; rows.len()],
        RowPredicate::None => return vec![false; rows.len()],
        RowPredicate::Where(p) => super::to_expr(p, None).unwrap(),
    };
    let kept = runtime.block_on(async {
        SessionContext::new()
            .read_batch(batch(rows))
            .unwrap()
            .filter(predicate)
            .unwrap()
            .select_columns(&["id"])
            .unwrap()
            .collect()
            .await
    });
    let kept = kept.unwrap_or_else(|e| panic!("the predicate failed to run: {e}"));
    let mut out = vec![false; rows.len()];
    for b in &kept {
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        for id in ids.values() {
            out[*id as usize] = true;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_global_rejects: 4096, ..ProptestConfig::default() })]

    #[test]
    fn the_scan_keeps_exactly_the_rows_cedar_allows(
        permit in condition(),
        forbid in prop::option::of(condition()),
        rows in prop::collection::vec(row(), 24),
    ) {
        let text = policies(&permit, forbid.as_deref());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.cedarschema"), ADMIN_SCHEMA).unwrap();
        std::fs::write(dir.path().join("policies.cedar"), &text).unwrap();
        std::fs::write(dir.path().join("entities.json"), ENTITIES).unwrap();
        // A condition strict validation refuses is not a policy anyone can load.
        let loaded = policy::PolicySet::load(dir.path(), &lake());
        prop_assume!(loaded.is_ok());
        let set = loaded.unwrap();
        let grant = set
            .grant("alice", "s1", "t.r", std::time::SystemTime::now())
            .unwrap();
        prop_assert!(grant.allowed);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let kept = scan_keeps(&runtime, &rows, &grant.rows);
        let allowed = cedar_allows(&text, &rows);
        for (i, r) in rows.iter().enumerate() {
            prop_assert_eq!(
                kept[i],
                allowed[i],
                "row {:?}: scan {} Cedar {} under {} (predicate {:?})",
                r, kept[i], allowed[i], text, grant.rows
            );
        }
    }
}
