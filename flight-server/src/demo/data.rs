//! The demo's rows: deterministic, seed-shaped tables (visits, contributions, enterprises,
//! penalties, building energy; residents, medical insurance, buildings) from a small PRNG.

use super::*;

// ---- data -------------------------------------------------------------------------------------

/// splitmix64: small, fast and the same on every machine, so the demo lake is deterministic.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(super) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

pub(super) const DISTRICTS: [(&str, &str); 6] = [
    ("Haidian", "110108"),
    ("Chaoyang", "110105"),
    ("Dongcheng", "110101"),
    ("Xicheng", "110102"),
    ("Fengtai", "110106"),
    ("Shijingshan", "110107"),
];
pub(super) const SURNAMES: [&str; 12] = [
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun",
];
pub(super) const GIVEN: [&str; 12] = [
    "Wei", "Fang", "Na", "Min", "Jing", "Lei", "Qiang", "Yan", "Jun", "Hui", "Xin", "Tao",
];

/// Days since 1970-01-01 of a civil date.
pub(super) fn days(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i32 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An 18-character resident identity number with a valid ISO 7064 MOD 11-2 check character.
pub(super) fn identity_number(rng: &mut Rng, region: &str) -> String {
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
pub(super) fn credit_code(rng: &mut Rng, region: &str) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    let tail: String = (0..10)
        .map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char)
        .collect();
    format!("91{region}{tail}")
}

pub(super) struct Person {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) district: &'static str,
}

pub(super) fn people(rng: &mut Rng, n: usize) -> Vec<Person> {
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

pub(super) struct Enterprise {
    pub(super) code: String,
    pub(super) district: &'static str,
}

/// Columns under construction, in schema order.
pub(super) struct Columns {
    pub(super) fields: Vec<Field>,
    pub(super) arrays: Vec<ArrayRef>,
}

impl Columns {
    pub(super) fn new() -> Self {
        Self {
            fields: Vec::new(),
            arrays: Vec::new(),
        }
    }
    pub(super) fn add(mut self, name: &str, array: ArrayRef) -> Self {
        self.fields
            .push(Field::new(name, array.data_type().clone(), false));
        self.arrays.push(array);
        self
    }
    pub(super) fn batch(self) -> anyhow::Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(self.fields)),
            self.arrays,
        )?)
    }
}

pub(super) fn strings(values: impl IntoIterator<Item = impl AsRef<str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

pub(super) fn longs(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    b.extend(values.into_iter().map(Some));
    Arc::new(b.finish())
}

pub(super) fn dates(values: impl IntoIterator<Item = i32>) -> ArrayRef {
    let mut b = Date32Builder::new();
    b.extend(values.into_iter().map(Some));
    Arc::new(b.finish())
}

/// Money in cents as DECIMAL(14, 2).
pub(super) fn money(cents: impl IntoIterator<Item = i64>) -> anyhow::Result<ArrayRef> {
    let mut b = Decimal128Builder::new().with_data_type(DataType::Decimal128(14, 2));
    b.extend(cents.into_iter().map(|c| Some(c as i128)));
    Ok(Arc::new(b.finish()))
}

pub(super) fn month_start(rng: &mut Rng) -> i32 {
    let m = rng.below(36) as u32;
    days(2023 + (m / 12) as i32, 1 + m % 12, 1)
}

pub(super) fn visits(rng: &mut Rng, persons: &[Person], n: usize) -> anyhow::Result<RecordBatch> {
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

pub(super) fn contributions(
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

pub(super) fn enterprises(
    rng: &mut Rng,
    list: &[Enterprise],
    reps: &[Person],
) -> anyhow::Result<RecordBatch> {
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

pub(super) fn penalties(
    rng: &mut Rng,
    list: &[Enterprise],
    n: usize,
) -> anyhow::Result<RecordBatch> {
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

pub(super) fn building_energy(
    rng: &mut Rng,
    owners: &[Enterprise],
    n: usize,
) -> anyhow::Result<RecordBatch> {
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

/// The birth date (days since 1970-01-01) an identity number carries (its characters 7-14).
pub(super) fn birth_date(id: &str) -> i32 {
    let n = |a: usize, b: usize| id[a..b].parse::<u32>().expect("digits");
    days(n(6, 10) as i32, n(10, 12), n(12, 14))
}

/// The resident register (civil affairs): one row per person.
pub(super) fn residents(persons: &[Person]) -> anyhow::Result<RecordBatch> {
    Columns::new()
        .add("person_id", strings(persons.iter().map(|p| &p.id)))
        .add("name", strings(persons.iter().map(|p| &p.name)))
        .add("district", strings(persons.iter().map(|p| p.district)))
        .add(
            "birth_date",
            dates(
                persons
                    .iter()
                    .map(|p| birth_date(&p.id))
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "gender",
            strings(persons.iter().map(|p| {
                // The 17th character: odd for men.
                if p.id.as_bytes()[16] % 2 == 1 {
                    "M"
                } else {
                    "F"
                }
            })),
        )
        .batch()
}

/// Basic medical insurance enrolment (healthcare security): most people, once each.
pub(super) fn insurance(rng: &mut Rng, persons: &[Person]) -> anyhow::Result<RecordBatch> {
    let mut rows: Vec<(&Person, &str, &str, i32)> = Vec::new();
    for p in persons {
        if rng.below(100) < 85 {
            let scheme = rng.pick(&["employee", "resident"]);
            let status = if rng.below(10) == 0 {
                "suspended"
            } else {
                "active"
            };
            let since = days(2000, 1, 1) + rng.below(25 * 365) as i32;
            rows.push((p, scheme, status, since));
        }
    }
    Columns::new()
        .add("person_id", strings(rows.iter().map(|r| &r.0.id)))
        .add("district", strings(rows.iter().map(|r| r.0.district)))
        .add("scheme", strings(rows.iter().map(|r| r.1)))
        .add("status", strings(rows.iter().map(|r| r.2)))
        .add(
            "enrolled_on",
            dates(rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        )
        .batch()
}

/// The building register (housing): the buildings of `building_energy` (`count` of them).
pub(super) fn buildings(rng: &mut Rng, count: usize) -> anyhow::Result<RecordBatch> {
    Columns::new()
        .add(
            "building_id",
            strings((0..count).map(|b| format!("B{b:06}"))),
        )
        .add(
            "district",
            strings((0..count).map(|b| DISTRICTS[b % DISTRICTS.len()].0)),
        )
        .add(
            "floor_area_m2",
            longs(
                (0..count)
                    .map(|_| 5_000 + rng.below(45_000) as i64)
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "use",
            strings(
                (0..count)
                    .map(|_| rng.pick(&["office", "residential", "commercial", "industrial"]))
                    .collect::<Vec<_>>(),
            ),
        )
        .add(
            "built_year",
            longs(
                (0..count)
                    .map(|_| 1980 + rng.below(44) as i64)
                    .collect::<Vec<_>>(),
            ),
        )
        .batch()
}
