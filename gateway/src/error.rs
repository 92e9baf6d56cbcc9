use datafusion::error::DataFusionError;

/// Why a query was refused or failed. The flight server turns each kind into one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The session declared no scenario.
    #[error("no scenario: set the session option `scenario` (ADBC: adbc.flight.sql.session.option.scenario) or the header `x-lakegate-scenario` to the id of an approved scenario")]
    NoScenario,
    /// The session's scenario is not declared in the policy entities.
    #[error("unknown scenario `{0}`: ask the platform for the id of an approved scenario")]
    UnknownScenario(String),
    /// The statement is not a read: lakegate serves the lake read-only.
    #[error("lakegate is read-only: {0}")]
    ReadOnly(String),
    /// The SQL does not parse or plan (syntax, unknown table or column, type errors).
    #[error("{0}")]
    Sql(DataFusionError),
    /// The query would release an aggregate-only column other than as an allowed aggregate.
    #[error("refused by the aggregate-only rule: {0}")]
    AggregateOnly(String),
    /// The statement is longer or deeper than the deployment's limits (`[execution]
    /// max_sql_bytes`, `max_expression_depth`).
    #[error("statement too large: {0}")]
    TooLarge(String),
    /// The policy set changed since the statement was planned, in a way that changes its result
    /// or its columns.
    #[error("the policies changed since the statement was prepared: {0}")]
    PolicyChanged(String),
    /// Bound parameters do not fit the statement.
    #[error("parameters: {0}")]
    Parameters(String),
    /// Execution failed.
    #[error("query failed: {0}")]
    Execution(DataFusionError),
    /// The audit trail could not be written: the query is refused (fail closed).
    #[error("audit: {0}")]
    Audit(String),
    /// Output review ended the result: a limit of the scenario or the deployment was exceeded.
    #[error("output review: {0}")]
    Review(String),
    /// A running result's grants changed (a policy reload or the scenario's expiry) and it
    /// was ended before its next batch.
    #[error("{0}")]
    GrantsChanged(String),
    /// The query ran longer than the deployment allows and was cancelled.
    #[error("query timeout: {0}")]
    Timeout(String),
    /// A differentially private release would spend more ε than the (user, scenario) has left.
    #[error("privacy budget: {0}")]
    PrivacyBudget(String),

    /// A per-user rate of accepted statement text was passed (`[audit]
    /// max_sql_bytes_per_user_minute`).
    #[error("rate limit: {0}")]
    RateLimited(String),
    /// The server's own configuration cannot be put to work.
    #[error("configuration: {0}")]
    Config(String),
    /// The lake could not be read.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// The policy folder could not be loaded or a decision could not be made.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
}

/// The most bytes of an error's text a client (or a completion record) gets: a status message
/// travels in an HTTP/2 header, and clients refuse large ones outright.
pub const MAX_CLIENT_TEXT_BYTES: usize = 4 << 10;

impl GatewayError {
    /// The text a client is told: the error's own message without backtraces, cut to
    /// [`MAX_CLIENT_TEXT_BYTES`]. A storage failure is told only as such: its text names the
    /// lake's paths, bucket and files, which are the operator's business, not the caller's
    /// (attacker round 28); [`GatewayError::record_text`] keeps them for the audit trail.
    pub fn client_text(&self) -> String {
        if self.is_storage_failure() {
            return STORAGE_FAILURE.to_owned();
        }
        self.record_text()
    }

    /// The text a completion record keeps: the client's text, with storage failures in full.
    pub fn record_text(&self) -> String {
        let text = match self {
            GatewayError::Sql(d) | GatewayError::Execution(d) => d.strip_backtrace(),
            other => other.to_string(),
        };
        // DataFusion names its own setting; the deployment sets lakegate's.
        let text = text.replace(
            "`datafusion.runtime.max_temp_directory_size`",
            "`[execution] max_spill_bytes`",
        );
        bounded_text(&text, MAX_CLIENT_TEXT_BYTES).into_owned()
    }

    /// Whether the lake's storage failed (a table's files or log could not be read), as opposed
    /// to the statement or the policies.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            GatewayError::Catalog(_) => true,
            GatewayError::Sql(d) | GatewayError::Execution(d) => {
                storage_root(d) || {
                    // Parquet's readers keep only the text of what failed below them (attacker
                    // round 30: "Failed to fetch metadata for file <lake path>: Object Store
                    // error …" as a ParquetError::General).
                    let text = d.strip_backtrace();
                    STORAGE_MARKERS.iter().any(|m| text.contains(m))
                }
            }
            _ => false,
        }
    }

    /// Classifies a DataFusion error raised while planning user SQL: lake and policy failures
    /// keep their kind, everything else is the user's SQL.
    pub(crate) fn from_planning(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<catalog::CatalogError>() {
                Ok(c) => GatewayError::Catalog(*c),
                Err(inner) => match inner.downcast::<policy::PolicyError>() {
                    Ok(p) => GatewayError::Policy(*p),
                    Err(inner) => GatewayError::Sql(DataFusionError::External(inner)),
                },
            },
            DataFusionError::Context(ctx, inner) => match Self::from_planning(*inner) {
                GatewayError::Sql(e) => {
                    GatewayError::Sql(DataFusionError::Context(ctx, Box::new(e)))
                }
                other => other,
            },
            other => GatewayError::Sql(other),
        }
    }
}

/// What a client is told of a storage failure.
pub const STORAGE_FAILURE: &str = "the lake could not be read (a storage failure); \
    the query was not answered; the operator's log and audit trail have the details";

/// What the texts of storage failures say when their kind was lost on the way: object_store's
/// own messages, and Parquet's (no statement reads a file but the lake's, so a Parquet error
/// is a damaged or unreadable data file).
const STORAGE_MARKERS: [&str; 6] = [
    "Object Store error",
    "Object at location",
    "Failed to fetch metadata for file",
    "Parquet error",
    "Parquet argument error",
    "LocalFileSystem error",
];

/// Whether a DataFusion error comes from the object store or the catalog (delta-rs), however
/// deeply DataFusion, arrow and parquet wrapped it. Local I/O errors are not it: spilling
/// reports its own limit as one.
fn storage_root(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::ObjectStore(_) => true,
        DataFusionError::Context(_, inner) => storage_root(inner),
        DataFusionError::Shared(inner) => storage_root(inner),
        DataFusionError::Diagnostic(_, inner) => storage_root(inner),
        DataFusionError::Collection(all) => all.iter().any(storage_root),
        DataFusionError::External(inner) => storage_chain(inner.as_ref()),
        DataFusionError::ArrowError(a, _) => storage_chain(a.as_ref()),
        // Only the lake's files are read as Parquet.
        DataFusionError::ParquetError(_) => true,
        _ => false,
    }
}

/// [`storage_root`] along an error's `source` chain.
fn storage_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<catalog::CatalogError>()
            || e.is::<deltalake::DeltaTableError>()
            || e.is::<deltalake::ObjectStoreError>()
            || e.downcast_ref::<DataFusionError>()
                .is_some_and(storage_root)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// `text` cut to at most `most` bytes (on a character boundary), saying how much was left out.
/// Error texts repeat what planning made of a statement, which can be far larger than the
/// statement (an alias expanded a thousand times: a 400 MB message, attacker round 11); what a
/// client or the audit trail gets of one is bounded.
pub fn bounded_text(text: &str, most: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= most {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut cut = most;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… ({} more bytes not shown)",
        &text[..cut],
        text.len() - cut
    ))
}

#[cfg(test)]
mod tests {
    use super::bounded_text;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary_and_say_so() {
        assert_eq!(bounded_text("short", 10), "short");
        let cut = bounded_text("ééééé", 3);
        assert_eq!(cut, "é… (8 more bytes not shown)");
    }

    #[test]
    fn storage_failures_are_told_only_as_such_wherever_they_are_wrapped() {
        use super::{GatewayError, STORAGE_FAILURE};
        use datafusion::arrow::error::ArrowError;
        use datafusion::error::DataFusionError;
        use std::sync::Arc;
        let missing = || deltalake::ObjectStoreError::NotFound {
            path: "/srv/lake/hr/employees/part-0.parquet".into(),
            source: "gone".into(),
        };
        for e in [
            DataFusionError::ObjectStore(Box::new(missing())),
            DataFusionError::External(Box::new(missing())),
            DataFusionError::Context(
                "scan".into(),
                Box::new(DataFusionError::ObjectStore(Box::new(missing()))),
            ),
            DataFusionError::ArrowError(
                Box::new(ArrowError::ExternalError(Box::new(missing()))),
                None,
            ),
            DataFusionError::Shared(Arc::new(DataFusionError::External(Box::new(
                DataFusionError::ObjectStore(Box::new(missing())),
            )))),
        ] {
            let e = GatewayError::Execution(e);
            assert_eq!(e.client_text(), STORAGE_FAILURE);
            assert!(e.record_text().contains("/srv/lake"), "{}", e.record_text());
        }
        // Kinds lost on the way (attacker round 30 M1): told by their text.
        for text in [
            "Parquet error: Failed to fetch metadata for file srv/lake/hr/part-0.parquet: \
             Object Store error: Generic LocalFileSystem error: Requested range was invalid",
            "Parquet argument error: External: snappy: corrupt input",
        ] {
            let e = GatewayError::Execution(DataFusionError::Execution(text.into()));
            assert_eq!(e.client_text(), STORAGE_FAILURE);
        }
        assert_eq!(
            GatewayError::Execution(DataFusionError::ParquetError(Box::new(
                datafusion::parquet::errors::ParquetError::General("bad footer".into())
            )))
            .client_text(),
            STORAGE_FAILURE
        );
        // Not the lake's storage: told as they are.
        for e in [
            DataFusionError::ResourcesExhausted("spill limit".into()),
            DataFusionError::IoError(std::io::Error::other("spill file")),
            DataFusionError::Plan("no such column".into()),
        ] {
            assert_ne!(GatewayError::Execution(e).client_text(), STORAGE_FAILURE);
        }
    }
}
