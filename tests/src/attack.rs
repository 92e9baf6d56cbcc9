//! The lake of `policy-model.md` §6, planted with canaries, for attack tests: `hr.employees`
//! (alice is an `hr_analyst` of district North; `diagnosis` aggregate-only with
//! `@min_group("10")`; `id_card` hashed; South rows hidden) and `org.departments` (a tree, for
//! recursive queries).
//!
//! Canaries: every South row's name and diagnosis, every raw `id_card`, and the diagnoses of the
//! North groups below k (`CANARY-DX-RARE`: 3 people, `CANARY-DX-NINE`: 9 people) contain
//! `CANARY`; nothing a client receives may.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

/// The substring every planted value carries.
pub const CANARY: &str = "CANARY";

/// alice's password.
pub const ALICE_PASSWORD: &str = "alice-pw";

/// The scenario that approves both tables for alice.
pub const SCENARIO: &str = "hr-analytics";

/// North employees per released diagnosis.
pub const NORTH_GROUPS: [(&str, usize); 4] = [
    ("Hypertension", 20),
    ("Diabetes", 15),
    ("CANARY-DX-NINE", 9),
    ("CANARY-DX-RARE", 3),
];

const SCHEMA: &str = r#"namespace Lake {
  entity Org, Role;
  entity User in [Role, Org] { district: String };
  entity Scenario { purpose: String, operator: Org, expires: datetime, tables: Set<Table> };
}
"#;

/// The policies of §6, and full access to `org.departments`.
pub const POLICIES: &str = r#"@id("scenario-scope")
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

@id("org-columns")
permit (principal, action == Lake::Action::"read_column", resource)
when { resource.table == Lake::Table::"org.departments" };

@id("org-rows")
permit (principal, action == Lake::Action::"read_row", resource is Lake::Rows::org::departments);
"#;

fn entities() -> serde_json::Value {
    serde_json::json!([
        {"uid": {"type": "Lake::Org", "id": "hr_office"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Lake::Role", "id": "hr_analyst"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Lake::User", "id": "alice"}, "attrs": {"district": "North"},
         "parents": [{"type": "Lake::Role", "id": "hr_analyst"}, {"type": "Lake::Org", "id": "hr_office"}]},
        {"uid": {"type": "Lake::Scenario", "id": SCENARIO},
         "attrs": {"purpose": "HR analytics", "operator": {"__entity": {"type": "Lake::Org", "id": "hr_office"}},
                   "expires": {"__extn": {"fn": "datetime", "arg": "2099-12-31T00:00:00Z"}},
                   "tables": [{"__entity": {"type": "Lake::Table", "id": "hr.employees"}},
                              {"__entity": {"type": "Lake::Table", "id": "org.departments"}}]},
         "parents": []}
    ])
}

/// The raw employees: (id, name, district, salary, id_card, diagnosis).
pub fn employees() -> Vec<(i64, String, String, i64, String, String)> {
    employees_of(&NORTH_GROUPS)
}

/// The raw employees with `groups` of North diagnoses (ids from 1 in that order) and 25 hidden
/// South rows after them.
pub fn employees_of(groups: &[(&str, usize)]) -> Vec<(i64, String, String, i64, String, String)> {
    let mut out = Vec::new();
    let mut id = 1i64;
    for &(diagnosis, n) in groups {
        for _ in 0..n {
            out.push((
                id,
                format!("Employee {id}"),
                "North".to_string(),
                30_000 + id * 100,
                format!("CANARY-IDCARD-{id:04}"),
                diagnosis.to_string(),
            ));
            id += 1;
        }
    }
    // Hidden rows: South, with diagnoses that exist nowhere else.
    for _ in 0..25 {
        out.push((
            id,
            format!("CANARY-SOUTH-NAME-{id}"),
            "South".to_string(),
            90_000 + id,
            format!("CANARY-IDCARD-{id:04}"),
            "CANARY-DX-SOUTH".to_string(),
        ));
        id += 1;
    }
    out
}

/// Writes the lake, its policies and a configuration under `dir`; returns the configuration's
/// path.
pub async fn build(dir: &Path) -> PathBuf {
    build_with(dir, &NORTH_GROUPS, POLICIES, SCHEMA, entities()).await
}

/// North employees per diagnosis in the differentially private lake: two large groups and
/// canaries of one and two people, which a noisy threshold releases with chance below 1e-6.
pub const PRIVATE_GROUPS: [(&str, usize); 4] = [
    ("Hypertension", 300),
    ("Diabetes", 250),
    ("CANARY-DX-ONE", 1),
    ("CANARY-DX-TWO", 2),
];

/// The canary lake with `diagnosis` released under `@epsilon(epsilon)` and, aggregate-only
/// beside it, `salary` under `@epsilon(epsilon) @bounds("0,100000")`; the scenario's
/// `epsilon_budget` is `budget`.
pub async fn build_private(dir: &Path, epsilon: &str, budget: &str) -> PathBuf {
    let policies = POLICIES
        .replace(
            r#"["id", "name", "district", "salary"]"#,
            r#"["id", "name", "district"]"#,
        )
        .replace(
            "@min_group(\"10\")",
            &format!("@min_group(\"10\")\n@epsilon(\"{epsilon}\")"),
        )
        + &format!(
            r#"
@id("hr-salary")
@epsilon("{epsilon}")
@bounds("0,100000")
permit (principal in Lake::Role::"hr_analyst", action == Lake::Action::"aggregate",
        resource == Lake::Column::"hr.employees.salary");
"#
        );
    let schema = SCHEMA.replace(
        "tables: Set<Table> }",
        "tables: Set<Table>, epsilon_budget?: decimal }",
    );
    let mut entities = entities();
    // Cedar decimals have a point.
    let budget = if budget.contains('.') {
        budget.to_string()
    } else {
        format!("{budget}.0")
    };
    entities[3]["attrs"]["epsilon_budget"] =
        serde_json::json!({"__extn": {"fn": "decimal", "arg": budget}});
    build_with(dir, &PRIVATE_GROUPS, &policies, &schema, entities).await
}

/// The canary lake with data products (`policy-model.md` §7) in `products/`, which read
/// `hr.employees` with their own rights (every row and column, raw), approved by the scenario:
///
/// - `employee_check(id int)`: the person's id and whether their diagnosis is Hypertension
///   (max_rows 1);
/// - `diagnosis_count(diagnosis string)`: how many people have the diagnosis (max_rows 1);
/// - `all_ids(min int)`: every id above `min` (max_rows 5: a call past it is refused);
/// - `salary_band(id int)`: approved only by the scenario `payroll`, which alice may also
///   work under;
/// - the scenario `verification` approves `employee_check` and no table.
pub async fn build_with_products(dir: &Path) -> PathBuf {
    let schema = SCHEMA.replace(
        "tables: Set<Table> }",
        "tables: Set<Table>, products?: Set<Product>, max_calls_per_day?: Long }",
    );
    let policies = format!("{POLICIES}{PRODUCT_POLICIES}");
    let mut entities = entities();
    let product =
        |name: &str| serde_json::json!({"__entity": {"type": "Lake::Product", "id": name}});
    entities[3]["attrs"]["products"] = serde_json::json!([
        product("employee_check"),
        product("diagnosis_count"),
        product("all_ids")
    ]);
    let mut payroll = entities[3].clone();
    payroll["uid"]["id"] = "payroll".into();
    payroll["attrs"]["products"] = serde_json::json!([product("salary_band")]);
    // A verification service's scenario: one product, no table.
    let mut verification = entities[3].clone();
    verification["uid"]["id"] = "verification".into();
    verification["attrs"]["tables"] = serde_json::json!([]);
    verification["attrs"]["products"] = serde_json::json!([
        product("employee_check"),
        product("employee_check_batch"),
        product("leaky_batch")
    ]);
    entities.as_array_mut().unwrap().push(payroll);
    entities.as_array_mut().unwrap().push(verification);
    let config = build_with(dir, &NORTH_GROUPS, &policies, &schema, entities).await;
    let products = dir.join("products");
    std::fs::create_dir_all(&products).unwrap();
    for (name, text) in PRODUCTS.into_iter().chain(BATCH_PRODUCTS) {
        std::fs::write(products.join(format!("{name}.toml")), text).unwrap();
    }
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[products]\ndir = \"products\"\n");
    std::fs::write(&config, text).unwrap();
    config
}

/// Products read with their own rights; scenarios approve who may call which.
pub const PRODUCT_POLICIES: &str = r#"
@id("products-read")
permit (principal is Lake::Product,
        action in [Lake::Action::"query", Lake::Action::"read_column", Lake::Action::"read_row"],
        resource);

@id("scenario-products")
permit (principal, action == Lake::Action::"invoke", resource)
when { context.scenario has products && resource in context.scenario.products
       && principal in context.scenario.operator && context.now < context.scenario.expires };
"#;

/// The products of [`build_with_products`], as (name, file).
pub const PRODUCTS: [(&str, &str); 4] = [
    (
        "employee_check",
        r#"description = "Is the employee's diagnosis Hypertension?"
sql = "SELECT id, diagnosis = 'Hypertension' AS hypertensive FROM hr.employees WHERE id = $id"
[params]
id = "int"
[review]
max_rows = 1
"#,
    ),
    (
        "diagnosis_count",
        r#"description = "How many employees have the diagnosis"
sql = "SELECT count(*) AS people FROM hr.employees WHERE diagnosis = $diagnosis"
[params]
diagnosis = "string"
[review]
max_rows = 1
"#,
    ),
    (
        "all_ids",
        r#"description = "Every id above min"
sql = "SELECT id FROM hr.employees WHERE id > $min ORDER BY id"
[params]
min = "int"
[review]
max_rows = 5
"#,
    ),
    (
        "salary_band",
        r#"description = "The employee's salary band"
sql = "SELECT id, salary / 10000 AS band FROM hr.employees WHERE id = $id"
[params]
id = "int"
"#,
    ),
];

/// Batch products of [`build_with_products`] (approved by the scenario `verification`): one
/// answering about each id sent, and one that answers about ids 1 to 3 whatever was sent.
pub const BATCH_PRODUCTS: [(&str, &str); 2] = [
    (
        "employee_check_batch",
        r#"description = "For each id: is the employee's diagnosis Hypertension?"
sql = """
SELECT k.id, e.diagnosis = 'Hypertension' AS hypertensive
FROM (SELECT unnest($id) AS id) k LEFT JOIN hr.employees e ON e.id = k.id
"""
[params]
id = "list<int>"
[review]
max_rows = 1
max_batch = 20000
batch_key = "id"
"#,
    ),
    (
        "leaky_batch",
        r#"description = "Answers about ids 1 to 3, whatever it is asked"
sql = "SELECT id, name FROM hr.employees WHERE id <= 3 AND cardinality($id) > 0"
[params]
id = "list<int>"
[review]
max_rows = 1
batch_key = "id"
"#,
    ),
];

async fn build_with(
    dir: &Path,
    groups: &[(&str, usize)],
    policies_text: &str,
    schema_text: &str,
    entities: serde_json::Value,
) -> PathBuf {
    let lake = dir.join("lake");
    let rows = employees_of(groups);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("salary", DataType::Int64, false),
        Field::new("id_card", DataType::Utf8, false),
        Field::new("diagnosis", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.2))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.4))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.5))),
        ],
    )
    .unwrap();
    write(&lake.join("hr").join("employees"), batch, "id").await;
    let departments = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("parent", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values([1, 2, 3])),
            Arc::new(Int64Array::from(vec![None, Some(1), Some(2)])),
        ],
    )
    .unwrap();
    write(&lake.join("org").join("departments"), departments, "id").await;

    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), schema_text).unwrap();
    std::fs::write(policies.join("policies.cedar"), policies_text).unwrap();
    std::fs::write(
        policies.join("entities.json"),
        serde_json::to_string_pretty(&entities).unwrap(),
    )
    .unwrap();
    let config = dir.join("lakegate.toml");
    std::fs::write(
        &config,
        format!(
            "[lake]\nroot = \"lake\"\n[policy]\ndir = \"policies\"\nmask_key = \"attack-test-mask-key\"\n\
             [audit]\ndir = \"audit\"\n[[users]]\nname = \"alice\"\npassword_hash = \"{}\"\n",
            flight_server::auth::hash_password(ALICE_PASSWORD)
        ) + &acceleration(),
    )
    .unwrap();
    config
}

/// With `LAKEGATE_TEST_ACCELERATE` set (the test command runs the attacks once more so), the
/// canary lake's tables are held in memory: every attack then runs against the held versions.
fn acceleration() -> String {
    match std::env::var_os(ACCELERATE_ENV) {
        Some(_) => ACCELERATED.to_string(),
        None => String::new(),
    }
}

/// The environment variable that turns [`ACCELERATED`] on for every canary lake.
pub const ACCELERATE_ENV: &str = "LAKEGATE_TEST_ACCELERATE";

/// `[acceleration]` holding both tables of the canary lake.
pub const ACCELERATED: &str =
    "[acceleration]\nmax_bytes = 268435456\ntables = [\"hr.employees\", \"org.departments\"]\n";

async fn write(path: &Path, batch: RecordBatch, subject_key: &str) {
    std::fs::create_dir_all(path).unwrap();
    let url = url::Url::from_directory_path(path).unwrap();
    flight_server::demo::write_delta_table(url, HashMap::new(), batch, subject_key)
        .await
        .unwrap();
}
