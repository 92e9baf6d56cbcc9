//! Cedar: the schema, the policies and the entities of a lakegate deployment, their validation,
//! and the decisions the gateway enforces.
//!
//! The lake's part of the Cedar schema is generated from a [`LakeDescription`] (the gateway builds
//! it from the catalog) and composed with the admin's `*.cedarschema` files; policies (`*.cedar`)
//! and `entities.json` are validated strictly against the composed schema. A request is answered
//! with a [`Grant`].
//!
//! This crate knows nothing of DataFusion or Flight: it speaks of users, scenarios, tables and
//! columns by name.

mod error;
mod grant;
mod lake_schema;
mod mask;
pub mod predicate;
mod privacy;
mod store;

pub use error::PolicyError;
pub use grant::{ColumnTreatment, Grant, Principal, RowPredicate};
pub use lake_schema::{
    generate_schema, CedarType, ColumnDescription, LakeDescription, TableDescription,
};
pub use mask::Mask;
pub use predicate::Predicate;
pub use privacy::{Bounds, Epsilon, Privacy, MAX_EPSILON};
pub use store::{PolicySet, ScenarioInfo, DEFAULT_MIN_GROUP};
