//! Enforcement: every policy rewrite of a query, and the only modules that know the secure table.
//!
//! One statement's way through it, for `alice` under a scenario whose grant on `hr.employees`
//! hashes `id_card`, hides South's rows and makes `diagnosis` aggregate-only (k = 10):
//!
//! ```text
//! SELECT diagnosis, count(*) FROM hr.employees GROUP BY diagnosis HAVING count(*) > 20
//!
//! before (what DataFusion alone would plan):     after (what runs):
//!   Filter: count(*) > 20                          Filter: count(*) > 20
//!     Aggregate: groupBy=[diagnosis]                 MinGroupRelease: __lakegate_k0 >= 10
//!       aggr=[count(*)]                                Aggregate: groupBy=[diagnosis]
//!       TableScan: hr.employees                          aggr=[count(*), count(DISTINCT subject)]
//!                                                        TableScan: hr.employees  <- SecureTable
//!                                                          SecureScanExec: district <> 'South',
//!                                                            mask('hash', id_card), subject
//!                                                            DeltaScan (raw columns)
//! ```
//!
//! - [`session_gate`]: decides each table's grant once per request (Cedar, cached per policy
//!   set) and hands the catalog a [`secure_scan::SecureTable`] instead of the raw table; a table
//!   the grant denies does not exist.
//! - [`wildcard`]: `SELECT *` leaves aggregate-only columns out, on the parsed statement.
//! - [`secure_scan`] / [`secure_exec`]: the barrier inside the scan — the row predicate
//!   ([`row_filter`]) on raw values, then masks ([`masks`]), hidden columns dropped, before any
//!   user expression runs; [`codec`] ships it (and the minimum-group release) to another
//!   process as its scan spec, planned again there.
//! - [`aggregate_only`]: the checker (which flows of an aggregate-only column are allowed) and
//!   the rewrite that puts a release directly above each releasing aggregate —
//!   [`min_group`] (k distinct subjects) or [`dp_release`] (differential privacy) — checked again
//!   on the optimized plan; [`release_shape`]: what a releasing query's aggregates may count.
//! - [`leaves`]: every physical plan reads data only through the secure scan (checked last).

pub(crate) mod aggregate_only;
pub(crate) mod codec;
pub(crate) mod dp_release;
pub(crate) mod leaves;
pub(crate) mod masks;
pub(crate) mod min_group;
pub(crate) mod release_shape;
pub(crate) mod row_filter;
pub(crate) mod secure_exec;
pub(crate) mod secure_scan;
pub(crate) mod session_gate;
pub(crate) mod wildcard;
