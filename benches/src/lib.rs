//! lakegate's benchmark harness (see `benches/README.md`): TPC-H over Delta answered six ways —
//! raw DataFusion, the gateway in-process (permissive and realistic policies), Flight SQL with the
//! Rust client, ADBC from Python, DuckDB — with every answer checked against the others.

pub mod answers;
pub mod harness;
pub mod memory;
pub mod modes;
pub mod products;
pub mod queries;
pub mod tpch;
pub mod wire;
