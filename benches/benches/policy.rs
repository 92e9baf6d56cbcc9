//! Micro-benchmarks of the policy layer with 1,000 policies and 10,000 entities:
//!
//! - `decision/3-tables`: the grants of one query's three tables for a (user, scenario) pair not
//!   decided before (Cedar `is_authorized` for scope and columns, type-aware partial evaluation
//!   for rows, translation — or the scenario's memo, see the percentiles);
//! - `decision+rewrite/3-tables`: the same grants, each turned into the secure table that
//!   replaces the raw one in the plan (the rewrite), on snapshots taken beforehand;
//! - `prepare_audited/3-table-join`: everything the server does per statement before execution
//!   (parse, a fresh Delta snapshot per table — a LIST of its log —, plan with the secure
//!   tables, decisions, the aggregate-only check, the plan described for the decision record,
//!   whose write runs beside);
//! - `tpe/translate`: translating one row residual into a predicate.
//!
//! After criterion's report, p50/p99 of single calls are printed (the issue's targets are
//! percentiles, which criterion does not report): cold (first user of each scenario on a
//! policy set just loaded), the same users after a gateway reload (which warms the new set with
//! the old one's last grants) and the reload itself, then 5,000 new (user, scenario) pairs in
//! scenarios already decided.
//!
//! `cargo bench -p lakegate-benches --bench policy`

use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use catalog::TableSnapshot;
use criterion::Criterion;
use gateway::{Gateway, Principal, SecureTable};
use lakegate_benches::tpch;
use policy::PolicySet;

/// The `lakegate` binary's allocator: see [`flight_server::allocator`].
#[global_allocator]
static ALLOC: flight_server::allocator::MiMalloc = flight_server::allocator::MiMalloc;

const POLICIES: usize = 1_000;
const ORGS: usize = 100;
const SCENARIOS: usize = 900;
const USERS: usize = 10_000 - ORGS - SCENARIOS;
/// Scenarios that policies name (five policies each); the others exist as entities only.
const POLICED_SCENARIOS: usize = (POLICIES - 1) / 5;

const QUERY: &str = "SELECT c_mktsegment, count(*) AS orders, sum(l_extendedprice) AS revenue \
    FROM tpch.customer JOIN tpch.orders ON c_custkey = o_custkey \
    JOIN tpch.lineitem ON l_orderkey = o_orderkey \
    WHERE o_orderdate < date '1995-03-15' GROUP BY c_mktsegment";
const QUERY_TABLES: [&str; 3] = ["tpch.customer", "tpch.orders", "tpch.lineitem"];

/// 1 scope policy + 999 per-scenario policies of five kinds (columns, a mask, rows by nation,
/// the other tables' rows, an aggregate-only column).
fn policies() -> String {
    let mut s = String::from(
        r#"@id("scope")
permit (principal, action == Lake::Action::"query", resource)
when {
  resource in context.scenario.tables &&
  principal in context.scenario.operator &&
  context.now < context.scenario.expires
};
"#,
    );
    for i in 0..POLICIES - 1 {
        let k = i / 5;
        let org = k % ORGS;
        let head = match i % 5 {
            0 => format!(
                "permit (principal in Lake::Org::\"org{org}\", action == Lake::Action::\"read_column\", resource)\n\
                 when {{ context.scenario == Lake::Scenario::\"s{k}\" && !([\"c_name\", \"c_phone\"].contains(resource.name)) }};"
            ),
            1 => format!(
                "@mask(\"show_last:4\")\npermit (principal in Lake::Org::\"org{org}\", action == Lake::Action::\"read_masked\", \
                 resource == Lake::Column::\"tpch.customer.c_phone\")\nwhen {{ context.scenario == Lake::Scenario::\"s{k}\" }};"
            ),
            2 => format!(
                "permit (principal in Lake::Org::\"org{org}\", action == Lake::Action::\"read_row\", resource is Lake::Rows::tpch::customer)\n\
                 when {{ context.scenario == Lake::Scenario::\"s{k}\" && context.scenario.nations.contains(resource.c_nationkey) }};"
            ),
            3 => format!(
                "permit (principal in Lake::Org::\"org{org}\", action == Lake::Action::\"read_row\", resource)\n\
                 when {{ context.scenario == Lake::Scenario::\"s{k}\" && !(resource is Lake::Rows::tpch::customer) }};"
            ),
            _ => format!(
                "@min_group(\"5\")\npermit (principal in Lake::Org::\"org{org}\", action == Lake::Action::\"aggregate\", \
                 resource == Lake::Column::\"tpch.part.p_retailprice\")\nwhen {{ context.scenario == Lake::Scenario::\"s{k}\" }};"
            ),
        };
        s.push_str(&format!("@id(\"p{i}\")\n{head}\n"));
    }
    s
}

/// 100 organisations, 9,000 users, 900 scenarios: 10,000 entities.
fn entities() -> serde_json::Value {
    use serde_json::json;
    let tables: Vec<serde_json::Value> = tpch::TABLES
        .iter()
        .map(|(t, _)| json!({"__entity": {"type": "Lake::Table", "id": format!("tpch.{t}")}}))
        .collect();
    let mut out = Vec::with_capacity(10_000);
    for o in 0..ORGS {
        out.push(json!({"uid": {"type": "Lake::Org", "id": format!("org{o}")}, "attrs": {}, "parents": []}));
    }
    for u in 0..USERS {
        out.push(
            json!({"uid": {"type": "Lake::User", "id": format!("u{u}")}, "attrs": {},
                        "parents": [{"type": "Lake::Org", "id": format!("org{}", u % ORGS)}]}),
        );
    }
    for k in 0..SCENARIOS {
        let nations: Vec<i64> = (0..25).filter(|n| (n + k as i64) % 3 != 0).collect();
        out.push(json!({"uid": {"type": "Lake::Scenario", "id": format!("s{k}")},
                        "attrs": {"purpose": format!("scenario {k}"),
                                  "operator": {"__entity": {"type": "Lake::Org", "id": format!("org{}", k % ORGS)}},
                                  "expires": {"__extn": {"fn": "datetime", "arg": "2099-12-31T23:59:59Z"}},
                                  "tables": tables, "nations": nations},
                        "parents": []}));
    }
    serde_json::Value::Array(out)
}

/// The n-th (user, scenario) pair: the user belongs to the scenario's operator, and pairs do not
/// repeat for 18,000 calls, so the per-second grant cache never answers.
fn principal(n: usize) -> Principal {
    let k = n % POLICED_SCENARIOS;
    let m = (n / POLICED_SCENARIOS) % (USERS / ORGS);
    let user = (k % ORGS) + ORGS * m;
    Principal {
        user: format!("u{user}"),
        scenario: Some(format!("s{k}")),
    }
}

struct Setup {
    dir: tempfile::TempDir,
    gateway: Arc<Gateway>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    tpch::generate(dir.path(), 0.001).await.unwrap();
    let p = dir.path().join("policies");
    std::fs::write(p.join("policies.cedar"), policies()).unwrap();
    std::fs::write(
        p.join("entities.json"),
        serde_json::to_string(&entities()).unwrap(),
    )
    .unwrap();
    let gateway = Arc::new(
        Gateway::open(&tpch::config(dir.path(), None).unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(gateway.policies().policy_count(), POLICIES);
    Setup { dir, gateway }
}

fn decide(g: &Gateway, who: &Principal) {
    let set = g.policies();
    for t in QUERY_TABLES {
        let grant = set
            .grant(
                &who.user,
                who.scenario.as_deref().unwrap(),
                t,
                SystemTime::now(),
            )
            .unwrap();
        assert!(grant.allowed, "{who:?} {t}");
        black_box(grant);
    }
}

/// Decision plus rewrite: each table's grant becomes its secure table.
fn decide_and_rewrite(g: &Gateway, who: &Principal, snapshots: &[TableSnapshot]) {
    decide_and_rewrite_with(&g.policies(), who, snapshots)
}

fn decide_and_rewrite_with(set: &PolicySet, who: &Principal, snapshots: &[TableSnapshot]) {
    let storage = Arc::new(std::collections::HashMap::new());
    for s in snapshots {
        let grant = set
            .grant(
                &who.user,
                who.scenario.as_deref().unwrap(),
                &s.table.to_string(),
                SystemTime::now(),
            )
            .unwrap();
        let table = SecureTable::try_new(s.clone(), grant, None, storage.clone()).unwrap();
        black_box(table);
    }
}

fn residual() -> cedar_policy::pst::Policy {
    let text = r#"permit (principal, action, resource) when {
        [1, 2, 3, 6, 7, 17, 19, 22, 23, 24].contains(resource.c_nationkey) &&
        (resource.c_mktsegment == "BUILDING" || resource.c_mktsegment like "AUTO*") &&
        !(resource.c_custkey < 100)
    };"#;
    cedar_policy::Policy::from_str(text)
        .unwrap()
        .to_pst()
        .unwrap()
}

/// Seconds each call of `f` took, for the n-th pairs ([`principal`]) of `pairs`.
fn time_each(pairs: std::ops::Range<usize>, mut f: impl FnMut(&Principal)) -> Vec<f64> {
    pairs
        .map(|n| {
            let who = principal(n);
            let t = Instant::now();
            f(&who);
            t.elapsed().as_secs_f64()
        })
        .collect()
}

fn percentiles(label: &str, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] * 1e3;
    println!(
        "{label:<28} n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let g = s.gateway.clone();
    let columns: Vec<String> = ["c_custkey", "c_nationkey", "c_mktsegment"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let pst = residual();
    let snapshots: Vec<TableSnapshot> = rt.block_on(async {
        let lake = g.lake();
        let mut out = Vec::new();
        for t in lake.tables() {
            if QUERY_TABLES.contains(&t.to_string().as_str()) {
                out.push(lake.snapshot(&t).await.unwrap().unwrap());
            }
        }
        out
    });
    assert_eq!(snapshots.len(), QUERY_TABLES.len());

    let mut c = Criterion::default().configure_from_args();
    let mut n = 0usize;
    c.bench_function("decision/3-tables (1,000 policies, 10,000 entities)", |b| {
        b.iter(|| {
            n += 1;
            decide(&g, &principal(n))
        })
    });
    c.bench_function("decision+rewrite/3-tables", |b| {
        b.iter(|| {
            n += 1;
            decide_and_rewrite(&g, &principal(n), &snapshots)
        })
    });
    c.bench_function(
        "prepare_audited/3-table-join (parse, snapshots, plan, decide, rewrite, describe)",
        |b| {
            b.iter(|| {
                n += 1;
                let who = principal(n);
                rt.block_on(async {
                    black_box(g.prepare_audited(&who, QUERY, None).await.unwrap())
                })
            })
        },
    );
    c.bench_function("tpe/translate (one residual)", |b| {
        b.iter(|| {
            black_box(policy::predicate::translate_clauses(pst.body().clauses(), &columns).unwrap())
        })
    });
    c.final_summary();

    // Percentiles over single calls; only under `cargo bench` (`cargo test` runs each
    // benchmark once, as a test).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Cold: a policy set just loaded, with empty caches and memos; the first query of each
    // scenario decides everything with Cedar (no grant, slice or memo answers). Ten sets, 199
    // scenarios each.
    let description = rt.block_on(gateway::describe_lake(g.lake())).unwrap();
    let policy_dir = s.dir.path().join("policies");
    let (mut cold, mut loads) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        let set = PolicySet::load(&policy_dir, &description).unwrap();
        loads.push(t.elapsed().as_secs_f64());
        cold.extend(time_each(0..POLICED_SCENARIOS, |who| {
            decide_and_rewrite_with(&set, who, &snapshots)
        }));
    }
    // After a reload: the gateway's new set decided the old set's last grants (up to 2,000)
    // before it began to serve, so the same (user, scenario) pairs find their decisions made.
    // The reload's own time (load, validation, warming) is timed too.
    let mut reloads = Vec::new();
    let mut after_reload = Vec::new();
    // One untimed round first: the set the first reload replaces served criterion's pairs,
    // not these.
    for round in 0..11 {
        let t = Instant::now();
        rt.block_on(g.reload_policies()).unwrap();
        let reload = t.elapsed().as_secs_f64();
        // A second later: the warmed grants themselves (per second) no longer answer, the
        // slices and memos they filled do.
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let times = time_each(0..POLICED_SCENARIOS, |who| {
            decide_and_rewrite(&g, who, &snapshots)
        });
        if round > 0 {
            reloads.push(reload);
            after_reload.extend(times);
        }
    }
    // Then (user, scenario) pairs never decided before (15,000 of the 17,910 pairs): no grant
    // or slice answers; the column and row decisions of a scenario's policies that read
    // neither the user nor the time come from the memo the first user of the scenario filled.
    let calls = 5_000;
    let (first, second, third) = (
        POLICED_SCENARIOS,
        POLICED_SCENARIOS + calls,
        POLICED_SCENARIOS + 2 * calls,
    );
    // One loop per measurement: timed right after a `prepare`, a decision's p99 was twice what
    // it is in a loop of its own (0.61 against 0.27 ms; caches and allocator state left by
    // planning, presumably).
    let decision = time_each(first..second, |who| decide(&g, who));
    let rewrite = time_each(second..third, |who| decide_and_rewrite(&g, who, &snapshots));
    let prepare = time_each(third..third + calls, |who| {
        rt.block_on(async { black_box(g.prepare_audited(who, QUERY, None).await.unwrap()) });
    });
    // The same users and scenarios again a second later: the grants are decided anew (a new
    // second), against the slices cut above.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let again = time_each(second..third, |who| decide_and_rewrite(&g, who, &snapshots));
    println!("\nPercentiles ({POLICIES} policies, 10,000 entities):");
    // The cold tail comes from whole sets whose 199 calls are all slower, not from positions
    // or scenarios (RESULTS §2): the per-set medians are printed with the percentiles.
    let set_medians: Vec<f64> = cold
        .chunks(POLICED_SCENARIOS)
        .map(|set| {
            let mut set = set.to_vec();
            set.sort_by(|a, b| a.total_cmp(b));
            set[set.len() / 2] * 1e3
        })
        .collect();
    percentiles("cold: 1st of a scenario", cold);
    println!(
        "{:<28} {}",
        "cold, median of each set",
        set_medians
            .iter()
            .map(|m| format!("{m:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    percentiles("1st after a reload (warmed)", after_reload);
    percentiles("load of a policy set", loads);
    percentiles("reload (load, warm)", reloads);
    percentiles("decision, 3 tables", decision);
    percentiles("decision + rewrite, 3 tables", rewrite);
    percentiles("prepare_audited (parse .. describe)", prepare);
    percentiles("decision + rewrite, slices cut", again);
}
