//! Data products (`policy-model.md` §7): the `[products] dir` folder, one `<name>.toml` per
//! product, read and checked as files. Whether a product's SQL plans under its own grants is
//! the gateway's to say.
//!
//! ```toml
//! # products/lapse_check.toml
//! description = "Has the person's contribution lapsed (3+ months in arrears)?"
//! sql = "SELECT person_id, ... WHERE person_id = $person_id GROUP BY person_id"
//! [params]
//! person_id = "string"        # string | int | decimal | date | timestamp | bool
//! [review]
//! max_rows = 1                # rows per call (default 100)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ConfigError;

/// Rows a call may return when the product's file names no `[review] max_rows`.
pub const DEFAULT_MAX_ROWS: u64 = 100;

/// The longest product name accepted.
pub const MAX_NAME_CHARS: usize = 64;

/// One approved query, as its file says.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductFile {
    /// The file's name without `.toml`: `[a-z][a-z0-9_]*`.
    pub name: String,
    /// What it answers, for the caller.
    pub description: String,
    /// The query, with named parameters (`$person_id`).
    pub sql: String,
    /// Its parameters in the order a call passes them.
    pub params: Vec<Param>,
    /// `[review] max_rows`: rows one call may return.
    pub max_rows: u64,
    /// SHA-256 of the file's bytes, hex: the version a call is recorded with.
    pub version: String,
    /// Where it was read from.
    pub path: PathBuf,
}

/// One parameter of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Its name, as `$name` in the SQL.
    pub name: String,
    /// Its type.
    pub ty: ParamType,
}

/// The types a product's parameter may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// Text.
    String,
    /// A 64-bit integer.
    Int,
    /// A decimal number.
    Decimal,
    /// A calendar date.
    Date,
    /// A point in time.
    Timestamp,
    /// True or false.
    Bool,
}

impl ParamType {
    /// The word the product file writes.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Decimal => "decimal",
            ParamType::Date => "date",
            ParamType::Timestamp => "timestamp",
            ParamType::Bool => "bool",
        }
    }

    /// The type a product file's word names.
    pub fn parse(word: &str) -> Option<Self> {
        [
            ParamType::String,
            ParamType::Int,
            ParamType::Decimal,
            ParamType::Date,
            ParamType::Timestamp,
            ParamType::Bool,
        ]
        .into_iter()
        .find(|t| t.as_str() == word)
    }
}

impl std::fmt::Display for ParamType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProduct {
    description: String,
    sql: String,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    review: RawReview,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReview {
    max_rows: Option<u64>,
}

/// Whether `name` may name a product (and a parameter): `[a-z][a-z0-9_]*`, at most
/// [`MAX_NAME_CHARS`].
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_NAME_CHARS
}

/// Every `*.toml` file of `dir`, in name order, each checked; the first bad one is the error
/// (its file and what is wrong). Other files are ignored.
pub fn read_products(dir: &Path) -> Result<Vec<ProductFile>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| read_product(p)).collect()
}

/// One product file.
pub fn read_product(path: &Path) -> Result<ProductFile, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = path.display().to_string();
    let invalid = |key: &str, problem: String, hint: &str| ConfigError::Invalid {
        file: file.clone(),
        key: key.to_string(),
        problem,
        hint: hint.to_string(),
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if !valid_name(&name) {
        return Err(invalid(
            "(file name)",
            format!("`{name}` cannot name a product"),
            "name the file <name>.toml with a name of lower-case letters, digits and _ that starts with a letter (at most 64 characters)",
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| ConfigError::Syntax {
        file: file.clone(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let raw: RawProduct = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.clone(),
        message: e.to_string(),
    })?;
    if raw.sql.trim().is_empty() {
        return Err(invalid(
            "sql",
            "is empty".into(),
            "write the product's query",
        ));
    }
    let mut params = Vec::with_capacity(raw.params.len());
    for (key, value) in &raw.params {
        if !valid_name(key) {
            return Err(invalid(
                &format!("params.{key}"),
                "is not a parameter name".into(),
                "use lower-case letters, digits and _, starting with a letter",
            ));
        }
        let ty = value.as_str().and_then(ParamType::parse).ok_or_else(|| {
            invalid(
                &format!("params.{key}"),
                format!("`{value}` is not a parameter type"),
                "write one of \"string\", \"int\", \"decimal\", \"date\", \"timestamp\", \"bool\"",
            )
        })?;
        params.push(Param {
            name: key.clone(),
            ty,
        });
    }
    let max_rows = raw.review.max_rows.unwrap_or(DEFAULT_MAX_ROWS);
    if max_rows == 0 {
        return Err(invalid(
            "review.max_rows",
            "is 0".into(),
            "a call must be allowed at least one row",
        ));
    }
    Ok(ProductFile {
        name,
        description: raw.description,
        sql: raw.sql,
        params,
        max_rows,
        version: hex::encode(Sha256::digest(&bytes)),
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const LAPSE: &str = r#"
description = "Has the person's contribution lapsed?"
sql = "SELECT person_id FROM social_security.contributions WHERE person_id = $person_id AND month >= $since"
[params]
since = "date"
person_id = "string"
[review]
max_rows = 1
"#;

    #[test]
    fn a_product_file_is_read_with_its_parameters_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "lapse_check.toml", LAPSE);
        write(dir.path(), "notes.txt", "not a product");
        let products = read_products(dir.path()).unwrap();
        assert_eq!(products.len(), 1);
        let p = &products[0];
        assert_eq!(p.name, "lapse_check");
        assert_eq!(p.max_rows, 1);
        let params: Vec<(&str, ParamType)> =
            p.params.iter().map(|p| (p.name.as_str(), p.ty)).collect();
        assert_eq!(
            params,
            [("since", ParamType::Date), ("person_id", ParamType::String)]
        );
        assert_eq!(p.version, hex::encode(Sha256::digest(LAPSE.as_bytes())));
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("Bad-Name.toml", LAPSE, "cannot name a product"),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nid = \"uuid\"\n",
                "params.id",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"  \"\n",
                "`sql`: is empty",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[review]\nmax_rows = 0\n",
                "review.max_rows",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\nowner = \"me\"\n",
                "unknown field `owner`",
            ),
            (
                "p.toml",
                "sql = \"SELECT 1\"\n",
                "missing field `description`",
            ),
        ];
        for (name, text, expected) in cases {
            let path = write(dir.path(), name, text);
            let err = read_product(&path).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.contains(&path.display().to_string()),
                "{name}: {err}"
            );
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn names_are_lower_case_words() {
        for good in ["a", "lapse_check", "grade2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "2x", "_x", "Lapse", "a-b", "a.b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
