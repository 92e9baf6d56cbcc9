//! The 22 TPC-H queries (`benches/queries/qNN.sql`), written for this project with the
//! specification's validation parameters; date arithmetic is folded into literals so that every
//! engine reads the same text.

/// One query.
#[derive(Debug, Clone)]
pub struct Query {
    /// `q01` … `q22`.
    pub name: String,
    /// The SQL text.
    pub sql: String,
}

macro_rules! queries {
    ($($name:literal),*) => {
        [$(($name, include_str!(concat!("../queries/", $name, ".sql")))),*]
    };
}

const QUERIES: [(&str, &str); 22] = queries!(
    "q01", "q02", "q03", "q04", "q05", "q06", "q07", "q08", "q09", "q10", "q11", "q12", "q13",
    "q14", "q15", "q16", "q17", "q18", "q19", "q20", "q21", "q22"
);

/// All 22 queries in order.
pub fn all() -> Vec<Query> {
    QUERIES
        .iter()
        .map(|(name, sql)| Query {
            name: name.to_string(),
            sql: sql.to_string(),
        })
        .collect()
}

/// The queries named in `list` (`1,6,q14`), in order; an unknown name is an error.
pub fn select(list: &str) -> anyhow::Result<Vec<Query>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let n: u32 = item
            .trim_start_matches(['q', 'Q'])
            .parse()
            .map_err(|_| anyhow::anyhow!("`{item}` is not a TPC-H query number (1 to 22)"))?;
        let name = format!("q{n:02}");
        let q = all()
            .into_iter()
            .find(|q| q.name == name)
            .ok_or_else(|| anyhow::anyhow!("there is no TPC-H query {n}: use 1 to 22"))?;
        out.push(q);
    }
    Ok(out)
}
