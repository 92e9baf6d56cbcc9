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

mod data;

use data::*;

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
pub const USERS: [DemoUser; 8] = [
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
    DemoUser {
        name: "caseworker",
        password: "caseworker-demo",
        scenario: "benefit-eligibility",
        role: "social-assistance caseworker; data products only",
    },
    DemoUser {
        name: "platform",
        password: "platform-demo",
        scenario: "identity-verification",
        role: "home-services platform; data products only (also care-matching)",
    },
    DemoUser {
        name: "developer",
        password: "developer-demo",
        scenario: "product-sandbox",
        role: "data-product developer; a fixed 10% sample of people, identities masked",
    },
];

/// Builds (or reuses) a demo lake folder.
#[derive(Debug, Clone)]
pub struct DemoLake {
    dir: PathBuf,
    rows: usize,
}

const MARKER: &str = ".demo-complete";

/// The demo's edition: raised whenever its tables, users, policies or products change, so that
/// a demo folder built by an older lakegate is rebuilt rather than reused.
const EDITION: u32 = 4;

/// `rows = N` and `edition = E` of a marker file (absent: before editions).
fn marker_fields(text: &str) -> (Option<usize>, Option<u32>) {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    (
        field("rows").and_then(|v| v.parse().ok()),
        field("edition").and_then(|v| v.parse().ok()),
    )
}

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
        let built = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
        let (built_rows, built_edition) = marker_fields(&built);
        if config.exists() && built_edition == Some(EDITION) {
            println!("reusing the demo lake in {}", dir.display());
            if built_rows != Some(self.rows) {
                // The lake is not rebuilt under a running or audited demo: say so.
                println!(
                    "  it was built with {} rows; --rows {} applies to a new --dir (or delete this one)",
                    built_rows.map_or("?".into(), |n| n.to_string()),
                    self.rows
                );
            }
            return Ok(config);
        }
        if config.exists() {
            // An older demo lacks tables, users or products this one's README shows: rebuilt,
            // keeping its audit trail.
            println!(
                "the demo in {} was built by an older lakegate: rebuilding it (its audit folder is kept)",
                dir.display()
            );
        }
        println!("building the demo lake in {} ...", dir.display());
        let lake = dir.join("lake");
        if lake.exists() {
            std::fs::remove_dir_all(&lake)?;
        }
        write_tables(&lake, self.rows).await?;
        write_policies(&dir.join("policies"))?;
        write_products(&dir.join("products"))?;
        std::fs::create_dir_all(dir.join("audit"))?;
        write_config(&config)?;
        std::fs::write(
            dir.join(MARKER),
            format!("rows = {}\nedition = {EDITION}\n", self.rows),
        )?;
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
        // Added with the data products; drawn after the tables above, which stay as they were.
        ("civil", "residents", residents(&persons)?, "person_id"),
        (
            "health",
            "insurance",
            insurance(&mut rng, &persons)?,
            "person_id",
        ),
        (
            "housing",
            "buildings",
            buildings(&mut rng, (rows / 2 / 24).max(20))?,
            "building_id",
        ),
    ];
    // The gas company's own meter readings (a third department for the carbon grade): the gas
    // of the utilities' table, so both tell the same story.
    let energy = &tables[4].2;
    let gas = energy.project(&[
        energy.schema().index_of("building_id")?,
        energy.schema().index_of("month")?,
        energy.schema().index_of("gas_m3")?,
    ])?;
    let mut tables = tables;
    tables.push(("gas", "meter_readings", gas, "building_id"));
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

const ADMIN_SCHEMA: &str = include_str!("../../demo/schema.cedarschema");

const POLICIES: &str = include_str!("../../demo/policies.cedar");

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
    let product = |id: &str| e("Lake::Product", id);
    // Scenarios approve data products (§7), some with a daily quota of calls per user.
    let approving = |mut s: serde_json::Value, products: &[&str], quota: Option<u64>| {
        s["attrs"]["products"] = products.iter().map(|p| product(p)).collect();
        if let Some(q) = quota {
            s["attrs"]["max_calls_per_day"] = q.into();
        }
        s
    };
    let insurance = approving(
        scenario(
            "insurance-underwriting",
            "health insurance underwriting: medical history statistics",
            "taiping_insurance",
            &["health.visits", "social_security.contributions"],
            "2030-12-31T23:59:59Z",
        ),
        &["risk_grade"],
        None,
    );
    let bank = approving(
        scenario(
            "bank-credit",
            "small-business credit assessment",
            "city_commercial_bank",
            &[
                "market.enterprises",
                "market.penalties",
                "social_security.contributions",
            ],
            "2030-12-31T23:59:59Z",
        ),
        &[
            "enterprise_profile",
            "supplier_rating",
            "building_carbon_grade",
        ],
        None,
    );
    let eligibility = approving(
        scenario(
            "benefit-eligibility",
            "social assistance: contribution lapse and medical insurance checks",
            "social_assistance_office",
            &[],
            "2030-12-31T23:59:59Z",
        ),
        &["lapse_check", "medical_insurance_status"],
        Some(1_000),
    );
    let verification = approving(
        scenario(
            "identity-verification",
            "home-services platform: identity verification of workers",
            "home_services_platform",
            &[],
            "2030-12-31T23:59:59Z",
        ),
        &["identity_check"],
        Some(300_000),
    );
    let care = approving(
        scenario(
            "care-matching",
            "home-services platform: matching older residents with care services",
            "home_services_platform",
            &[],
            "2030-12-31T23:59:59Z",
        ),
        &["care_tags"],
        Some(5),
    );
    json!([
        org("taiping_insurance"),
        org("city_commercial_bank"),
        org("haidian_district_office"),
        org("data_bureau"),
        org("public_health_institute"),
        org("social_assistance_office"),
        org("home_services_platform"),
        org("data_lab"),
        role("underwriter"),
        role("credit_analyst"),
        role("district_officer"),
        role("regulator"),
        role("statistician"),
        role("caseworker"),
        role("platform_operator"),
        role("product_developer"),
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
        user(
            "caseworker",
            "Haidian",
            "caseworker",
            "social_assistance_office"
        ),
        user(
            "platform",
            "Chaoyang",
            "platform_operator",
            "home_services_platform"
        ),
        user("developer", "Dongcheng", "product_developer", "data_lab"),
        insurance,
        bank,
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
        eligibility,
        verification,
        care,
        // Product developers build and validate products on a sample (§8).
        scenario(
            "product-sandbox",
            "developing data products on a 10% sample of people, identities masked",
            "data_lab",
            &[
                "civil.residents",
                "health.insurance",
                "health.visits",
                "social_security.contributions"
            ],
            "2030-12-31T23:59:59Z"
        ),
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

/// The demo's data products (`policy-model.md` §7), one per seed case, as (name, file).
const PRODUCTS: [(&str, &str); 8] = [
    (
        "lapse_check",
        include_str!("../../demo/products/lapse_check.toml"),
    ),
    (
        "medical_insurance_status",
        include_str!("../../demo/products/medical_insurance_status.toml"),
    ),
    (
        "identity_check",
        include_str!("../../demo/products/identity_check.toml"),
    ),
    (
        "risk_grade",
        include_str!("../../demo/products/risk_grade.toml"),
    ),
    (
        "care_tags",
        include_str!("../../demo/products/care_tags.toml"),
    ),
    (
        "building_carbon_grade",
        include_str!("../../demo/products/building_carbon_grade.toml"),
    ),
    (
        "supplier_rating",
        include_str!("../../demo/products/supplier_rating.toml"),
    ),
    (
        "enterprise_profile",
        include_str!("../../demo/products/enterprise_profile.toml"),
    ),
];

fn write_products(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in PRODUCTS {
        std::fs::write(dir.join(format!("{name}.toml")), text)?;
    }
    Ok(())
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
         [products]\ndir = \"products\"\n\n\
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
