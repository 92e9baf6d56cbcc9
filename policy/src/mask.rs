//! Column masks named by `@mask("...")` on `read_masked` permits (`policy-model.md` §5).

use std::fmt;
use std::str::FromStr;

/// How a masked column's values are replaced inside the scan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mask {
    /// Keyed HMAC-SHA256 of the value, hex (the key is the deployment's secret).
    Hash,
    /// Strings become `****`, other types NULL.
    Redact,
    /// NULL.
    Null,
    /// The first N characters kept, the rest `*`.
    ShowFirst(usize),
    /// The last N characters kept, the rest `*`.
    ShowLast(usize),
    /// Dates and timestamps truncated to the year.
    Year,
    /// Numbers rounded to a multiple of N.
    Round(u64),
    /// SQL text with every literal replaced by `?` (statement shapes stay, parameters go); text
    /// that does not parse as SQL becomes `****`.
    SqlLiterals,
    /// Free text (an error message) with every quoted string and every number replaced by `?`:
    /// errors quote the literals of the statements they are about.
    Literals,
}

impl Mask {
    /// Orders masks by how much they hide; of several masks the most restrictive wins.
    fn restrictiveness(&self) -> (u8, u64) {
        match self {
            Mask::Null => (6, 0),
            Mask::Redact => (5, 0),
            Mask::Hash => (4, 0),
            Mask::SqlLiterals | Mask::Literals => (3, u64::MAX),
            // Fewer characters shown hides more.
            Mask::ShowFirst(n) | Mask::ShowLast(n) => (3, u64::MAX - *n as u64),
            Mask::Round(n) => (2, *n),
            Mask::Year => (1, 0),
        }
    }

    /// The most restrictive of `masks`.
    pub fn most_restrictive(masks: impl IntoIterator<Item = Mask>) -> Option<Mask> {
        masks.into_iter().max_by_key(|m| m.restrictiveness())
    }
}

impl FromStr for Mask {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (s.trim(), None),
        };
        let number = |what: &str| -> Result<u64, String> {
            arg.and_then(|a| a.parse::<u64>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{what}` takes a positive whole number, e.g. `{what}:4`"))
        };
        match (name, arg) {
            ("hash", None) => Ok(Mask::Hash),
            ("redact", None) => Ok(Mask::Redact),
            ("null", None) => Ok(Mask::Null),
            ("year", None) => Ok(Mask::Year),
            ("sql_literals", None) => Ok(Mask::SqlLiterals),
            ("literals", None) => Ok(Mask::Literals),
            ("show_first", _) => Ok(Mask::ShowFirst(number("show_first")? as usize)),
            ("show_last", _) => Ok(Mask::ShowLast(number("show_last")? as usize)),
            ("round", _) => Ok(Mask::Round(number("round")?)),
            _ => Err(format!(
                "unknown mask `{s}`: use hash, redact, null, show_first:N, show_last:N, year, round:N, sql_literals or literals"
            )),
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Hash => write!(f, "hash"),
            Mask::Redact => write!(f, "redact"),
            Mask::Null => write!(f, "null"),
            Mask::ShowFirst(n) => write!(f, "show_first:{n}"),
            Mask::ShowLast(n) => write!(f, "show_last:{n}"),
            Mask::Year => write!(f, "year"),
            Mask::Round(n) => write!(f, "round:{n}"),
            Mask::SqlLiterals => write!(f, "sql_literals"),
            Mask::Literals => write!(f, "literals"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in [
            "hash",
            "redact",
            "null",
            "show_first:3",
            "show_last:4",
            "year",
            "round:1000",
            "sql_literals",
            "literals",
        ] {
            assert_eq!(s.parse::<Mask>().unwrap().to_string(), s);
        }
        for bad in ["md5", "show_first", "show_first:0", "round:x", "hash:1"] {
            assert!(bad.parse::<Mask>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_restrictive_wins() {
        let pick = |v: &[&str]| {
            Mask::most_restrictive(v.iter().map(|s| s.parse().unwrap()))
                .unwrap()
                .to_string()
        };
        assert_eq!(pick(&["hash", "redact"]), "redact");
        assert_eq!(pick(&["show_first:6", "show_first:2"]), "show_first:2");
        assert_eq!(pick(&["round:10", "round:1000"]), "round:1000");
        assert_eq!(pick(&["year", "null"]), "null");
    }
}
