//! `lakegate demo`: a deterministic local lake shaped like the public-data seed cases, with users,
//! scenarios and policies, ready to serve.
//!
//! ```text
//! <dir>/lakegate.toml        configuration (users with argon2id hashes)
//! <dir>/lake/<schema>/<table> Delta tables written with delta-rs
//! <dir>/policies/            schema.cedarschema, policies.cedar, entities.json
//! <dir>/audit/               the audit folder
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::auth::hash_password;

/// A demo user: name, password, the scenario it works under, and what it is.
#[derive(Debug, Clone)]
pub struct DemoUser {
    /// Login name.
    pub name: &'static str,
    /// Demo password (printed; for a local demo only).
    pub password: &'static str,
    /// The scenario to use.
    pub scenario: &'static str,
    /// Who this is.
    pub role: &'static str,
}

/// The demo users.
pub const USERS: [DemoUser; 5] = [
    DemoUser {
        name: "insurer",
        password: "insurer-demo",
        scenario: "insurance-underwriting",
        role: "underwriter at an insurer",
    },
    DemoUser {
        name: "banker",
        password: "banker-demo",
        scenario: "bank-credit",
        role: "credit analyst at a bank",
    },
    DemoUser {
        name: "officer",
        password: "officer-demo",
        scenario: "district-services",
        role: "Haidian district officer",
    },
    DemoUser {
        name: "regulator",
        password: "regulator-demo",
        scenario: "supervision",
        role: "data bureau regulator",
    },
    DemoUser {
        name: "statistician",
        password: "statistician-demo",
        scenario: "health-statistics",
        role: "public-health statistician; diagnoses with differential privacy",
    },
];

/// Builds (or reuses) a demo lake folder.
#[derive(Debug, Clone)]
pub struct DemoLake {
    dir: PathBuf,
    rows: usize,
}

const MARKER: &str = ".demo-complete";

impl DemoLake {
    /// A demo lake under `dir` with the default size (20,000 medical visits).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            rows: 20_000,
        }
    }

    /// The number of rows of the largest tables (at least 1,000).
    pub fn with_rows(mut self, rows: usize) -> Self {
        self.rows = rows.max(1_000);
        self
    }

    /// Writes the lake, policies and configuration unless a complete demo is already there.
    /// Returns the configuration file.
    pub async fn build(self) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let dir = std::fs::canonicalize(&self.dir)?;
        let config = dir.join("lakegate.toml");
        if dir.join(MARKER).exists() && config.exists() {
            println!("reusing the demo lake in {}", dir.display());
            let built = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
            if built.trim() != format!("rows = {}", self.rows) {
                // The lake is not rebuilt under a running or audited demo: say so.
                println!(
                    "  it was built with {}; --rows {} applies to a new --dir (or delete this one)",
                    built.trim(),
                    self.rows
                );
            }
            return Ok(config);
        }
        println!("building the demo lake in {} ...", dir.display());
        let lake = dir.join("lake");
        if lake.exists() {
            std::fs::remove_dir_all(&lake)?;
        }
        write_tables(&lake, self.rows).await?;
        write_policies(&dir.join("policies"))?;
        std::fs::create_dir_all(dir.join("audit"))?;
        write_config(&config)?;
        std::fs::write(dir.join(MARKER), format!("rows = {}\n", self.rows))?;
        Ok(config)
    }
}

/// What to print once the demo serves.
pub fn connection_help(addr: &str, tls_ca: Option<&Path>) -> String {
    let mut s = String::new();
    s.push_str("\nDemo users (local demo passwords):\n");
    for u in USERS {
        s.push_str(&format!(
            "  {:<10} password {:<15} scenario {:<24} ({})\n",
            u.name, u.password, u.scenario, u.role
        ));
    }
    let (uri, tls_line) = match tls_ca {
        Some(ca) => (
            format!("grpc+tls://{addr}"),
            format!(
                "\n        \"adbc.flight.sql.client_option.tls_root_certs\": open({:?}).read(),",
                ca.display().to_string()
            ),
        ),
        None => (format!("grpc://{addr}"), String::new()),
    };
    s.push_str(&format!(
        r#"
Connect from Python (pip install adbc-driver-flightsql pyarrow):

import adbc_driver_flightsql.dbapi as flightsql
conn = flightsql.connect("{uri}", autocommit=True,
    db_kwargs={{"username": "banker", "password": "banker-demo",{tls_line}}},
    conn_kwargs={{"adbc.flight.sql.session.option.scenario": "bank-credit"}})
cur = conn.cursor()
cur.execute("SELECT district, count(*) AS n FROM market.enterprises GROUP BY district ORDER BY n DESC")
print(cur.fetch_arrow_table())
"#
    ));
    s
}

/// Generates the demo's certificates into `tls/` beside `config` (once) and adds
/// `[server.tls]` to the configuration if it has none.
pub fn enable_tls(config: &Path) -> anyhow::Result<()> {
    let dir = config
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no folder", config.display()))?
        .join("tls");
    if !dir.join("server.pem").exists() {
        crate::tls::generate(&dir)?;
    }
    let text = std::fs::read_to_string(config)?;
    if !text.contains("[server.tls]") {
        std::fs::write(
            config,
            format!("{text}\n[server.tls]\ncert = \"tls/server.pem\"\nkey = \"tls/server.key\"\n"),
        )?;
    }
    Ok(())
}

// ---- data -------------------------------------------------------------------------------------

/// splitmix64: small, fast and the same on every machine, so the demo lake is deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const DISTRICTS: [(&str, &str); 6] = [
    ("Haidian", "110108"),
    ("Chaoyang", "110105"),
    ("Dongcheng", "110101"),
    ("Xicheng", "110102"),
    ("Fengtai", "110106"),
    ("Shijingshan", "110107"),
];
const SURNAMES: [&str; 12] = [
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun",
];
const GIVEN: [&str; 12] = [
    "Wei", "Fang", "Na", "Min", "Jing", "Lei", "Qiang", "Yan", "Jun", "Hui", "Xin", "Tao",
];

/// Days since 1970-01-01 of a civil date.
fn days(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i32 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An 18-character resident identity number with a valid ISO 7064 MOD 11-2 check character.
fn identity_number(rng: &mut Rng, region: &str) -> String {
    let year = 1950 + rng.below(55);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    let body = format!("{region}{year:04}{month:02}{day:02}{:03}", rng.below(1000));
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(W)
        .map(|(c, w)| c.to_digit(10).expect("digits") * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// An 18-character unified social credit code (shape only).
fn credit_code(rng: &mut Rng, region: &str) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    let tail: String = (0..10)
        .map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char)
        .collect();
    format!("91{region}{tail}")
}

struct Person {
    id: String,
    name: String,
    district: &'static str,
}

fn people(rng: &mut Rng, n: usize) -> Vec<Person> {
    (0..n)
        .map(|_| {
            let (district, region) = DISTRICTS[rng.below(DISTRICTS.len() as u64) as usize];
            Person {
                id: identity_number(rng, region),
                name: format!("{} {}", rng.pick(&SURNAMES), rng.pick(&GIVEN)),
                district,
            }
        })
        .collect()
}

struct Enterprise {
    code: String,
    district: &'static str,
}

/// Columns under construction, in schema order.
struct Columns {
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl Columns {
    fn new() -> Self {
        Self {
            fields: Vec::new(),
            arrays: Vec::new(),
        }
    }
    fn add(mut self, name: &str, array: ArrayRef) -> Self {
        self.fields
            .push(Field::new(name, array.data_type().clone(), false));
        self.arrays.push(array);
        self
    }
    fn batch(self) -> anyhow::Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(self.fields)),
            self.arrays,
        )?)
    }
}

fn strings(values: impl IntoIterator<Item = impl AsRef<str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn longs(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    b.extend(values.into_iter().map(Some));
    Arc::new(b.finish())
}

fn dates(values: impl IntoIterator<Item = i32>) -> ArrayRef {
    let mut b = Date32Builder::new();
    b.extend(values.into_iter().map(Some));
    Arc::new(b.finish())
}

/// Money in cents as DECIMAL(14, 2).
fn money(cents: impl IntoIterator<Item = i64>) -> anyhow::Result<ArrayRef> {
    let mut b = Decimal128Builder::new().with_data_type(DataType::Decimal128(14, 2));
    b.extend(cents.into_iter().map(|c| Some(c as i128)));
    Ok(Arc::new(b.finish()))
}

fn month_start(rng: &mut Rng) -> i32 {
    let m = rng.below(36) as u32;
    days(2023 + (m / 12) as i32, 1 + m % 12, 1)
}

fn visits(rng: &mut Rng, persons: &[Person], n: usize) -> anyhow::Result<RecordBatch> {
    const HOSPITALS: [&str; 5] = [
        "Peking University Third Hospital",
        "Haidian Hospital",
        "Chaoyang Hospital",
        "Beijing Hospital",
        "Fengtai Community Health Centre",
    ];
    const DIAGNOSES: [&str; 8] = [
        "E11 Type 2 diabetes",
        "I10 Essential hypertension",
        "J06 Upper respiratory infection",
        "K29 Gastritis",
        "M54 Back pain",
        "F32 Depressive episode",
        "C34 Lung cancer",
        "Z00 General examination",
    ];
    let who: Vec<&Person> = (0..n)
        .map(|_| &persons[rng.below(persons.len() as u64) as usize])
        .collect();
    Columns::new()
        .add("visit_id", longs((1..=n as i64).collect::<Vec<_>>()))
        .add("patient_id", strings(who.iter().map(|p| &p.id)))
        .add("patient_name", strings(who.iter().map(|p| &p.name)))
        .add("district", strings(who.iter().map(|p| p.district)))
        .add(
            "visit_date",
            dates(
                (0..n)
                    .map(|_| days(2023, 1, 1) + rng.below(3 * 365) as i32)
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "hospital",
            strings((0..n).map(|_| rng.pick(&HOSPITALS)).collect::<Vec<_>>()),
        )
        .add(
            "diagnosis",
            strings((0..n).map(|_| rng.pick(&DIAGNOSES)).collect::<Vec<_>>()),
        )
        .add(
            "cost",
            money(
                (0..n)
                    .map(|_| 5_000 + rng.below(2_000_000) as i64)
                    .collect::<Vec<_>>(),
            )?,
        )
        .batch()
}

fn contributions(
    rng: &mut Rng,
    persons: &[Person],
    employers: &[Enterprise],
    n: usize,
) -> anyhow::Result<RecordBatch> {
    let who: Vec<&Person> = (0..n)
        .map(|_| &persons[rng.below(persons.len() as u64) as usize])
        .collect();
    let base: Vec<i64> = (0..n)
        .map(|_| 300_000 + rng.below(3_000_000) as i64)
        .collect();
    Columns::new()
        .add("record_id", longs((1..=n as i64).collect::<Vec<_>>()))
        .add("person_id", strings(who.iter().map(|p| &p.id)))
        .add("person_name", strings(who.iter().map(|p| &p.name)))
        .add("district", strings(who.iter().map(|p| p.district)))
        .add(
            "employer_code",
            strings(
                (0..n)
                    .map(|_| {
                        employers[rng.below(employers.len() as u64) as usize]
                            .code
                            .clone()
                    })
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "month",
            dates((0..n).map(|_| month_start(rng)).collect::<Vec<_>>()),
        )
        .add("base_salary", money(base.clone())?)
        .add("amount", money(base.iter().map(|b| b * 8 / 100))?)
        .add(
            "status",
            strings(
                (0..n)
                    .map(|_| {
                        if rng.below(20) == 0 {
                            "arrears"
                        } else {
                            "paid"
                        }
                    })
                    .collect::<Vec<_>>(),
            ),
        )
        .batch()
}

fn enterprises(rng: &mut Rng, list: &[Enterprise], reps: &[Person]) -> anyhow::Result<RecordBatch> {
    const WORDS: [&str; 10] = [
        "Xinhua",
        "Zhongguancun",
        "Jinghua",
        "Huaxia",
        "Tianyuan",
        "Hengtong",
        "Yuanda",
        "Changcheng",
        "Boya",
        "Ruixin",
    ];
    const INDUSTRIES: [&str; 6] = [
        "Technology",
        "Trading",
        "Construction",
        "Catering",
        "Logistics",
        "Pharmaceuticals",
    ];
    let n = list.len();
    let industry: Vec<&str> = (0..n).map(|_| rng.pick(&INDUSTRIES)).collect();
    let rep: Vec<&Person> = (0..n)
        .map(|_| &reps[rng.below(reps.len() as u64) as usize])
        .collect();
    Columns::new()
        .add("credit_code", strings(list.iter().map(|e| &e.code)))
        .add(
            "name",
            strings(
                industry
                    .iter()
                    .map(|i| format!("Beijing {} {} Co., Ltd.", rng.pick(&WORDS), i))
                    .collect::<Vec<_>>(),
            ),
        )
        .add("legal_rep_name", strings(rep.iter().map(|p| &p.name)))
        .add("legal_rep_id", strings(rep.iter().map(|p| &p.id)))
        .add("district", strings(list.iter().map(|e| e.district)))
        .add("industry", strings(industry.iter()))
        .add(
            "registered_capital",
            money(
                (0..n)
                    .map(|_| (10 + rng.below(5_000) as i64) * 1_000_000)
                    .collect::<Vec<_>>(),
            )?,
        )
        .add(
            "established",
            dates(
                (0..n)
                    .map(|_| days(1995, 1, 1) + rng.below(30 * 365) as i32)
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "status",
            strings(
                (0..n)
                    .map(|_| match rng.below(20) {
                        0 => "revoked",
                        1 => "cancelled",
                        _ => "active",
                    })
                    .collect::<Vec<_>>(),
            ),
        )
        .batch()
}

fn penalties(rng: &mut Rng, list: &[Enterprise], n: usize) -> anyhow::Result<RecordBatch> {
    const REASONS: [&str; 5] = [
        "False advertising",
        "Unlicensed operation",
        "Food safety violation",
        "Late annual report",
        "Price fraud",
    ];
    let who: Vec<&Enterprise> = (0..n)
        .map(|_| &list[rng.below(list.len() as u64) as usize])
        .collect();
    Columns::new()
        .add("penalty_id", longs((1..=n as i64).collect::<Vec<_>>()))
        .add("credit_code", strings(who.iter().map(|e| &e.code)))
        .add("district", strings(who.iter().map(|e| e.district)))
        .add(
            "decided_on",
            dates(
                (0..n)
                    .map(|_| days(2021, 1, 1) + rng.below(5 * 365) as i32)
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "reason",
            strings((0..n).map(|_| rng.pick(&REASONS)).collect::<Vec<_>>()),
        )
        .add(
            "amount",
            money(
                (0..n)
                    .map(|_| (1 + rng.below(500) as i64) * 100_000)
                    .collect::<Vec<_>>(),
            )?,
        )
        .batch()
}

fn building_energy(rng: &mut Rng, owners: &[Enterprise], n: usize) -> anyhow::Result<RecordBatch> {
    let buildings = (n / 24).max(20);
    let building: Vec<u64> = (0..n).map(|_| rng.below(buildings as u64)).collect();
    Columns::new()
        .add(
            "building_id",
            strings(building.iter().map(|b| format!("B{b:06}"))),
        )
        .add(
            "district",
            strings(
                building
                    .iter()
                    .map(|b| DISTRICTS[(*b as usize) % DISTRICTS.len()].0),
            ),
        )
        .add(
            "month",
            dates((0..n).map(|_| month_start(rng)).collect::<Vec<_>>()),
        )
        .add(
            "electricity_kwh",
            longs(
                (0..n)
                    .map(|_| 2_000 + rng.below(200_000) as i64)
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "water_m3",
            longs(
                (0..n)
                    .map(|_| 50 + rng.below(5_000) as i64)
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "gas_m3",
            longs((0..n).map(|_| rng.below(8_000) as i64).collect::<Vec<_>>()),
        )
        .add(
            "owner_code",
            strings(
                building
                    .iter()
                    .map(|b| owners[(*b as usize) % owners.len()].code.clone()),
            ),
        )
        .batch()
}

/// Writes one Delta table and sets its subject key with a property commit
/// ([`catalog::write_subject_table`]).
pub async fn write_delta_table(
    url: url::Url,
    options: HashMap<String, String>,
    batch: RecordBatch,
    subject_key: &str,
) -> anyhow::Result<DeltaTable> {
    Ok(catalog::write_subject_table(url, options, batch, subject_key).await?)
}

async fn write_tables(lake: &Path, rows: usize) -> anyhow::Result<()> {
    let mut rng = Rng(20_261_124);
    let persons = people(&mut rng, (rows / 4).max(400));
    let firms: Vec<Enterprise> = (0..(rows / 20).max(200))
        .map(|_| {
            let (district, region) = DISTRICTS[rng.below(DISTRICTS.len() as u64) as usize];
            Enterprise {
                code: credit_code(&mut rng, region),
                district,
            }
        })
        .collect();
    let tables: Vec<(&str, &str, RecordBatch, &str)> = vec![
        (
            "health",
            "visits",
            visits(&mut rng, &persons, rows)?,
            "patient_id",
        ),
        (
            "social_security",
            "contributions",
            contributions(&mut rng, &persons, &firms, rows)?,
            "person_id",
        ),
        (
            "market",
            "enterprises",
            enterprises(&mut rng, &firms, &persons)?,
            "credit_code",
        ),
        (
            "market",
            "penalties",
            penalties(&mut rng, &firms, rows / 10)?,
            "credit_code",
        ),
        (
            "utilities",
            "building_energy",
            building_energy(&mut rng, &firms, rows / 2)?,
            "building_id",
        ),
    ];
    // lakegate's own tables, empty until the first audit segment closes, so that policies can
    // name them from the start.
    for (name, schema) in [
        ("queries", gateway::audit::table::queries_schema()),
        ("usage", gateway::audit::table::usage_schema()),
    ] {
        let path = lake.join(gateway::audit::table::AUDIT_SCHEMA).join(name);
        std::fs::create_dir_all(&path)?;
        let url = url::Url::from_directory_path(&path)
            .map_err(|_| anyhow::anyhow!("{} is not an absolute path", path.display()))?;
        gateway::audit::table::write_table(
            url,
            HashMap::new(),
            RecordBatch::new_empty(schema),
            SaveMode::Overwrite,
        )
        .await?;
    }
    for (schema, table, batch, key) in tables {
        let path = lake.join(schema).join(table);
        std::fs::create_dir_all(&path)?;
        let url = url::Url::from_directory_path(&path)
            .map_err(|_| anyhow::anyhow!("{} is not an absolute path", path.display()))?;
        let n = batch.num_rows();
        write_delta_table(url, HashMap::new(), batch, key).await?;
        println!("  wrote {schema}.{table} ({n} rows)");
    }
    Ok(())
}

// ---- policies and configuration ---------------------------------------------------------------

const ADMIN_SCHEMA: &str = include_str!("../demo/schema.cedarschema");

const POLICIES: &str = include_str!("../demo/policies.cedar");

fn entities() -> serde_json::Value {
    use serde_json::json;
    let e = |ty: &str, id: &str| json!({"__entity": {"type": ty, "id": id}});
    let table = |id: &str| e("Lake::Table", id);
    let org =
        |id: &str| json!({"uid": {"type": "Lake::Org", "id": id}, "attrs": {}, "parents": []});
    let role =
        |id: &str| json!({"uid": {"type": "Lake::Role", "id": id}, "attrs": {}, "parents": []});
    let user = |id: &str, district: &str, role: &str, org: &str| {
        json!({"uid": {"type": "Lake::User", "id": id}, "attrs": {"district": district},
               "parents": [{"type": "Lake::Role", "id": role}, {"type": "Lake::Org", "id": org}]})
    };
    let scenario = |id: &str, purpose: &str, operator: &str, tables: &[&str], expires: &str| {
        json!({"uid": {"type": "Lake::Scenario", "id": id},
               "attrs": {"purpose": purpose, "operator": e("Lake::Org", operator),
                         "expires": {"__extn": {"fn": "datetime", "arg": expires}},
                         "tables": tables.iter().map(|t| table(t)).collect::<Vec<_>>(),
                         "max_rows": 100_000},
               "parents": []})
    };
    let mut health_statistics = scenario(
        "health-statistics",
        "public-health statistics: diagnoses with differential privacy",
        "public_health_institute",
        &["health.visits"],
        "2030-12-31T23:59:59Z",
    );
    health_statistics["attrs"]["epsilon_budget"] =
        json!({"__extn": {"fn": "decimal", "arg": "10.0"}});
    json!([
        org("taiping_insurance"),
        org("city_commercial_bank"),
        org("haidian_district_office"),
        org("data_bureau"),
        org("public_health_institute"),
        role("underwriter"),
        role("credit_analyst"),
        role("district_officer"),
        role("regulator"),
        role("statistician"),
        user("insurer", "Haidian", "underwriter", "taiping_insurance"),
        user(
            "banker",
            "Chaoyang",
            "credit_analyst",
            "city_commercial_bank"
        ),
        user(
            "officer",
            "Haidian",
            "district_officer",
            "haidian_district_office"
        ),
        user("regulator", "Dongcheng", "regulator", "data_bureau"),
        user(
            "statistician",
            "Dongcheng",
            "statistician",
            "public_health_institute"
        ),
        scenario(
            "insurance-underwriting",
            "health insurance underwriting: medical history statistics",
            "taiping_insurance",
            &["health.visits", "social_security.contributions"],
            "2030-12-31T23:59:59Z"
        ),
        scenario(
            "bank-credit",
            "small-business credit assessment",
            "city_commercial_bank",
            &[
                "market.enterprises",
                "market.penalties",
                "social_security.contributions"
            ],
            "2030-12-31T23:59:59Z"
        ),
        scenario(
            "district-services",
            "district public services planning",
            "haidian_district_office",
            &[
                "health.visits",
                "social_security.contributions",
                "utilities.building_energy"
            ],
            "2030-12-31T23:59:59Z"
        ),
        scenario(
            "supervision",
            "supervision of data use",
            "data_bureau",
            &[
                "health.visits",
                "social_security.contributions",
                "market.enterprises",
                "market.penalties",
                "utilities.building_energy",
                "lakegate_audit.queries",
                "lakegate_audit.usage"
            ],
            "2030-12-31T23:59:59Z"
        ),
        health_statistics,
        // An approved scenario whose time is up: it exists, and grants nothing.
        scenario(
            "expired-pilot",
            "2024 pilot, ended",
            "city_commercial_bank",
            &["market.enterprises"],
            "2024-12-31T23:59:59Z"
        ),
    ])
}

fn write_policies(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("schema.cedarschema"), ADMIN_SCHEMA)?;
    std::fs::write(dir.join("policies.cedar"), POLICIES)?;
    std::fs::write(
        dir.join("entities.json"),
        serde_json::to_string_pretty(&entities())?,
    )?;
    Ok(())
}

fn write_config(path: &Path) -> anyhow::Result<()> {
    // The demo's own secret for keyed masks; a deployment sets LAKEGATE_MASK_KEY instead.
    let mask_key = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let mut s = format!(
        "# Written by `lakegate demo`. Paths are relative to this file.\n\n\
         [server]\nlisten = \"127.0.0.1:50051\"\n\n\
         [lake]\nroot = \"lake\"\n\n\
         [policy]\ndir = \"policies\"\nmask_key = \"{mask_key}\"\n\n\
         [audit]\ndir = \"audit\"\n\
         # Small segments, so that closed segments reach lakegate_audit.queries soon.\n\
         segment_bytes = 65536\n",
    );
    for u in USERS {
        s.push_str(&format!(
            "\n[[users]]\nname = \"{}\"  # demo password: {}\npassword_hash = \"{}\"\n",
            u.name,
            u.password,
            hash_password(u.password)
        ));
    }
    std::fs::write(path, s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_numbers_carry_a_valid_check_character() {
        let mut rng = Rng(1);
        for _ in 0..100 {
            let id = identity_number(&mut rng, "110108");
            assert_eq!(id.len(), 18);
            assert!(id.starts_with("110108"));
        }
        // A published example: 11010519491231002X.
        let body = "11010519491231002";
        const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
        let sum: u32 = body
            .chars()
            .zip(W)
            .map(|(c, w)| c.to_digit(10).unwrap() * w)
            .sum();
        assert_eq!(b"10X98765432"[(sum % 11) as usize] as char, 'X');
    }

    #[test]
    fn civil_days() {
        assert_eq!(days(1970, 1, 1), 0);
        assert_eq!(days(2000, 3, 1), 11_017);
        assert_eq!(days(2024, 12, 31), 20_088);
    }

    #[test]
    fn the_same_seed_gives_the_same_lake() {
        let a = people(&mut Rng(7), 10);
        let b = people(&mut Rng(7), 10);
        assert_eq!(
            a.iter().map(|p| &p.id).collect::<Vec<_>>(),
            b.iter().map(|p| &p.id).collect::<Vec<_>>()
        );
    }
}
