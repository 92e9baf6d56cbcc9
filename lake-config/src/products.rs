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
//!
//! A **batch** product takes a list (`"list<string>"`, ...) and answers about each of its
//! values in one call; `[review] batch_key` names the list parameter whose values the output
//! repeats in the column of the same name, and `max_rows` counts per value:
//!
//! ```toml
//! sql = "SELECT k.person_id, ... FROM (SELECT unnest($person_id) AS person_id) k LEFT JOIN ..."
//! [params]
//! person_id = "list<string>"
//! [review]
//! max_rows = 1                # rows per value of the list
//! max_batch = 100000          # values per call (default 100,000)
//! batch_key = "person_id"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ConfigError;

/// Rows a call may return when the product's file names no `[review] max_rows`.
pub const DEFAULT_MAX_ROWS: u64 = 100;

/// Values a list argument may hold when the product's file names no `[review] max_batch`.
pub const DEFAULT_MAX_BATCH: u64 = 100_000;

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
    /// `[review] max_rows`: rows one call may return (per value of a batch call's list).
    pub max_rows: u64,
    /// `[review] max_batch`: values a list argument may hold.
    pub max_batch: u64,
    /// `[review] batch_key`: the list parameter a batch product answers about, by value;
    /// its output has a column of the same name. Set exactly when a parameter is a list.
    pub batch_key: Option<String>,
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
    /// Its type (of each value, for a list).
    pub ty: ParamType,
    /// A list of values of `ty` (`"list<string>"`): a batch call.
    pub list: bool,
}

impl Param {
    /// The word the product file writes for its type: `string`, `list<string>`.
    pub fn type_word(&self) -> String {
        type_word(self.ty, self.list)
    }
}

/// The product file's word for a type: `string`, or `list<string>` for a list of them.
pub fn type_word(ty: ParamType, list: bool) -> String {
    if list {
        format!("list<{ty}>")
    } else {
        ty.to_string()
    }
}

/// The type a product file's word names, and whether it is a list of it.
pub fn parse_type_word(word: &str) -> Option<(ParamType, bool)> {
    match word.strip_prefix("list<").and_then(|w| w.strip_suffix('>')) {
        Some(inner) => ParamType::parse(inner.trim()).map(|t| (t, true)),
        None => ParamType::parse(word).map(|t| (t, false)),
    }
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
    max_batch: Option<u64>,
    batch_key: Option<String>,
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
    read_products_each(dir)?
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

/// One file of a product folder and what reading it gave.
pub type ReadProduct = (PathBuf, Result<ProductFile, ConfigError>);

/// Every `*.toml` file of `dir`, in name order, with what reading it gave: a server leaves a
/// bad file out (or keeps its last good version) and serves the rest. A folder that does not
/// read is the error.
pub fn read_products_each(dir: &Path) -> Result<Vec<ReadProduct>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let read = read_product(&p);
            (p, read)
        })
        .collect())
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
        let (ty, list) = value.as_str().and_then(parse_type_word).ok_or_else(|| {
            invalid(
                &format!("params.{key}"),
                format!("`{value}` is not a parameter type"),
                "write one of \"string\", \"int\", \"decimal\", \"date\", \"timestamp\", \"bool\", or a list of one (\"list<string>\")",
            )
        })?;
        params.push(Param {
            name: key.clone(),
            ty,
            list,
        });
    }
    let max_batch = raw.review.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
    if max_batch == 0 {
        return Err(invalid(
            "review.max_batch",
            "is 0".into(),
            "a batch call must be allowed at least one value",
        ));
    }
    let lists: Vec<&str> = params
        .iter()
        .filter(|p| p.list)
        .map(|p| p.name.as_str())
        .collect();
    match (&raw.review.batch_key, lists.is_empty()) {
        (None, false) => return Err(invalid(
            "review.batch_key",
            format!(
                "is missing, and {} is a list: a batch product must say which list its \
                     output rows answer about",
                lists.join(", ")
            ),
            "name the list parameter whose values the output repeats in a column of the same name",
        )),
        (Some(key), true) => {
            return Err(invalid(
                "review.batch_key",
                format!("is `{key}`, but no parameter is a list"),
                "remove it, or declare the parameter as a list (\"list<string>\")",
            ))
        }
        (Some(key), false) if !lists.contains(&key.as_str()) => {
            return Err(invalid(
                "review.batch_key",
                format!("`{key}` is not a list parameter"),
                "name one of the list parameters",
            ))
        }
        _ => {}
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
        max_batch,
        batch_key: raw.review.batch_key,
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
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nids = \"list<string>\"\n",
                "review.batch_key",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nid = \"string\"\n[review]\nbatch_key = \"id\"\n",
                "no parameter is a list",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nids = \"list<string>\"\nid = \"int\"\n[review]\nbatch_key = \"id\"\n",
                "`id` is not a list parameter",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nids = \"list<list<int>>\"\n[review]\nbatch_key = \"ids\"\n",
                "params.ids",
            ),
            (
                "p.toml",
                "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nids = \"list<int>\"\n[review]\nbatch_key = \"ids\"\nmax_batch = 0\n",
                "review.max_batch",
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
    fn a_batch_product_declares_its_list_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "verify.toml",
            "description = \"x\"\nsql = \"SELECT 1\"\n[params]\nid = \"list<string>\"\nname = \"list< string >\"\n[review]\nbatch_key = \"id\"\nmax_rows = 1\n",
        );
        let p = read_product(&path).unwrap();
        let words: Vec<String> = p.params.iter().map(Param::type_word).collect();
        assert_eq!(words, ["list<string>", "list<string>"]);
        assert_eq!(p.batch_key.as_deref(), Some("id"));
        assert_eq!(p.max_batch, DEFAULT_MAX_BATCH);
        assert_eq!(parse_type_word("list<date>"), Some((ParamType::Date, true)));
        assert_eq!(parse_type_word("int"), Some((ParamType::Int, false)));
        for bad in ["list<>", "list<uuid>", "list<int", "array<int>"] {
            assert_eq!(parse_type_word(bad), None, "{bad}");
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
