//! DataFusion catalog providers over the lake, with a gate in front of every table.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};

use crate::{Lake, TableRef, TableSnapshot};

/// The catalog name under which the lake is registered: tables are `lake.<schema>.<table>`.
pub const LAKE_CATALOG: &str = "lake";

/// Decides, for one session, what a table of the lake looks like to it.
///
/// The gateway implements this: it wraps the raw Delta scan in its secure scan, and answers
/// `None` for a table the session may not see, which DataFusion then reports exactly as a table
/// that does not exist.
pub trait TableGate: Debug + Send + Sync {
    /// Whether `table` shows in listings (`information_schema`, `SHOW TABLES`).
    fn lists(&self, table: &TableRef) -> bool;

    /// The provider this session's queries read `snapshot` through, or `None` when the table
    /// does not exist for the session.
    fn admit(&self, snapshot: TableSnapshot) -> Result<Option<Arc<dyn TableProvider>>>;
}

/// The `lake` catalog: one schema per department, every table behind a [`TableGate`].
#[derive(Debug)]
pub struct LakeCatalogProvider {
    lake: Arc<Lake>,
    gate: Arc<dyn TableGate>,
    prefetched: Prefetched,
}

/// How many snapshots [`LakeCatalogProvider::prefetch`] takes at a time.
const PREFETCH_CONCURRENCY: usize = 16;

/// Snapshots taken ahead of planning, each handed out once.
type Prefetched = Arc<Mutex<HashMap<TableRef, TableSnapshot>>>;

impl LakeCatalogProvider {
    /// A catalog over `lake` whose tables pass through `gate`.
    pub fn new(lake: Arc<Lake>, gate: Arc<dyn TableGate>) -> Self {
        Self {
            lake,
            gate,
            prefetched: Prefetched::default(),
        }
    }

    /// Takes fresh snapshots of `tables` concurrently, for the planning that follows:
    /// DataFusion opens a statement's tables one after another, each a round trip to the store.
    /// Only known tables the gate lists are opened; a table that fails here is opened again
    /// when planning asks for it, and reports its error then. Each snapshot serves one lookup.
    pub async fn prefetch(&self, tables: impl IntoIterator<Item = TableRef>) {
        let mut wanted: Vec<TableRef> = tables
            .into_iter()
            .filter(|t| self.lake.contains(t) && self.gate.lists(t))
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.len() < 2 {
            return;
        }
        use futures::StreamExt;
        // A statement may name hundreds of tables: a bounded number of requests at a time.
        let taken: Vec<_> = futures::stream::iter(wanted)
            .map(|t| async move {
                let snapshot = self.lake.snapshot_read(&t).await;
                (t, snapshot)
            })
            .buffer_unordered(PREFETCH_CONCURRENCY)
            .collect()
            .await;
        let mut prefetched = self
            .prefetched
            .lock()
            .expect("prefetched snapshots poisoned");
        for (t, snapshot) in taken {
            if let Ok(Some(snapshot)) = snapshot {
                prefetched.insert(t, snapshot);
            }
        }
    }
}

impl CatalogProvider for LakeCatalogProvider {
    fn schema_names(&self) -> Vec<String> {
        let listed: std::collections::BTreeSet<String> = self
            .lake
            .tables()
            .into_iter()
            .filter(|t| self.gate.lists(t))
            .map(|t| t.schema)
            .collect();
        listed.into_iter().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        // Every name resolves: an unknown schema then fails exactly as an unknown table does.
        Some(Arc::new(LakeSchemaProvider {
            lake: self.lake.clone(),
            gate: self.gate.clone(),
            schema: name.to_string(),
            prefetched: self.prefetched.clone(),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        _schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        Err(read_only(&format!("create schema {name}")))
    }
}

/// One department's tables.
#[derive(Debug)]
struct LakeSchemaProvider {
    lake: Arc<Lake>,
    gate: Arc<dyn TableGate>,
    schema: String,
    prefetched: Prefetched,
}

#[async_trait]
impl SchemaProvider for LakeSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.lake
            .tables()
            .into_iter()
            .filter(|t| t.schema == self.schema && self.gate.lists(t))
            .map(|t| t.table)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let t = TableRef::new(self.schema.clone(), name);
        // A table the gate would not list is not even opened.
        if self.lake.contains(&t) && !self.gate.lists(&t) {
            return Ok(None);
        }
        let prefetched = self
            .prefetched
            .lock()
            .expect("prefetched snapshots poisoned")
            .remove(&t);
        let snapshot = match prefetched {
            Some(snapshot) => Ok(Some(snapshot)),
            None => self.lake.snapshot_read(&t).await,
        };
        match snapshot {
            Ok(Some(snapshot)) => {
                if !self.gate.lists(&t) {
                    return Ok(None);
                }
                self.gate.admit(snapshot)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(read_only(&format!("create table {}.{name}", self.schema)))
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(read_only(&format!("drop table {}.{name}", self.schema)))
    }

    fn table_exist(&self, name: &str) -> bool {
        let t = TableRef::new(self.schema.clone(), name);
        self.lake.contains(&t) && self.gate.lists(&t)
    }
}

fn read_only(what: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "the lake is read-only through lakegate: cannot {what}"
    ))
}
