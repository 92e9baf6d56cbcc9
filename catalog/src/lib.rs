//! The departments' Delta tables.
//!
//! This crate owns the lake: resolving `lake.<schema>.<table>` to a Delta table under the lake root
//! (`<root>/<schema>/<table>/_delta_log`, on a local folder or any S3-compatible store), opening and
//! refreshing snapshots so that a department's new commit is seen by the next query, the table
//! metadata the gateway needs (columns, version, subject key), the DataFusion catalog providers, and
//! writing the few tables lakegate keeps itself (the audit export) or builds (the demo).
//!
//! It knows nothing of Cedar or Flight. The DataFusion providers hand every table snapshot to a
//! [`TableGate`], which the gateway implements: that is where the secure scan is put in front of
//! the Delta scan, and where a table the session may not see disappears.

pub mod accel;
mod error;
mod lake;
mod provider;
mod write;

pub use error::CatalogError;
pub use lake::{delta_scan, ColumnBounds, Lake, TableRef, TableSnapshot, SUBJECT_KEY_PROPERTY};
pub use provider::{LakeCatalogProvider, TableGate, LAKE_CATALOG};
pub use write::{write_subject_table, write_table};
