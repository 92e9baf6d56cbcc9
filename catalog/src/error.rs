/// Errors from opening or reading the lake.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The lake root could not be reached or listed.
    #[error("cannot list the lake root {root}: {source}; check lake.root and, for s3:// roots, [lake.s3] endpoint, region and credentials")]
    ListRoot {
        /// The root URI.
        root: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// A Delta table could not be opened or refreshed.
    #[error("cannot read Delta table {table} at {url}: {source}")]
    Delta {
        /// `schema.table`.
        table: String,
        /// Where it lives.
        url: String,
        /// delta-rs's error.
        source: Box<deltalake::DeltaTableError>,
    },
    /// The lake root itself could not be set up (bad URI or options).
    #[error("cannot open the lake at {root}: {source}")]
    Open {
        /// The root URI.
        root: String,
        /// delta-rs's error.
        source: Box<deltalake::DeltaTableError>,
    },
    /// A Delta table lakegate writes (the audit export, the demo) could not be written.
    #[error("cannot write Delta table {url}: {source}")]
    Write {
        /// Where it lives.
        url: String,
        /// delta-rs's error.
        source: Box<deltalake::DeltaTableError>,
    },
    /// A configured override names a column the table does not have.
    #[error("table {table}: subject key `{key}` is not a column of the table; fix lakegate.subject_key or [lake.tables.\"{table}\"] subject_key")]
    SubjectKey {
        /// `schema.table`.
        table: String,
        /// The key that was named.
        key: String,
    },
}
