//! `lakegate.products`: the data products a session may call (name, description, parameters,
//! output columns, rows per call), as a table of the session's catalog beside the
//! lake's schemas. A product the session may not invoke is not listed, as it does not exist
//! for the session.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};

use super::call::{signature, CallEnv};

/// The schema of the listing, beside the lake's department schemas.
pub(crate) const LISTING_SCHEMA: &str = "lakegate";
/// The listing's table.
pub(crate) const LISTING_TABLE: &str = "products";

/// A user session's catalog: the lake's schemas, and [`LISTING_SCHEMA`].
#[derive(Debug)]
pub(crate) struct SessionCatalog {
    lake: Arc<dyn CatalogProvider>,
    listing: Arc<ListingSchema>,
}

impl SessionCatalog {
    /// `lake` with the products listing of the caller `env`.
    pub(crate) fn new(lake: Arc<dyn CatalogProvider>, env: Arc<CallEnv>) -> Self {
        Self {
            lake,
            listing: Arc::new(ListingSchema { env }),
        }
    }
}

impl CatalogProvider for SessionCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.lake.schema_names();
        names.push(LISTING_SCHEMA.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == LISTING_SCHEMA {
            return Some(self.listing.clone());
        }
        self.lake.schema(name)
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.lake.register_schema(name, schema)
    }
}

/// `lakegate`: the one table `products`, made when it is read.
#[derive(Debug)]
pub(crate) struct ListingSchema {
    env: Arc<CallEnv>,
}

#[async_trait]
impl SchemaProvider for ListingSchema {
    fn table_names(&self) -> Vec<String> {
        vec![LISTING_TABLE.to_string()]
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name != LISTING_TABLE {
            return Ok(None);
        }
        Ok(Some(Arc::new(ProductsTable {
            env: self.env.clone(),
        })))
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!(
            "lakegate is read-only: cannot create {LISTING_SCHEMA}.{name}"
        )))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == LISTING_TABLE
    }
}

/// The listing's columns.
pub(crate) fn listing_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("name"),
        text("description"),
        text("parameters"),
        text("output"),
        Field::new("max_rows", DataType::Int64, false),
    ]))
}

/// `lakegate.products`, listed when it is scanned (each execution plans its scan again), so a
/// prepared statement lists what the session may call when it runs, under the policies and
/// products in force then (attacker round 23 L3: a withdrawn product stayed listed).
#[derive(Debug)]
struct ProductsTable {
    env: Arc<CallEnv>,
}

#[async_trait]
impl TableProvider for ProductsTable {
    fn schema(&self) -> SchemaRef {
        listing_schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = listing(&self.env)?;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// One row per product the caller may invoke now, by name.
fn listing(env: &CallEnv) -> Result<RecordBatch> {
    let policies = env.sessions.policies();
    let products = env.sessions.products();
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for p in products.iter() {
        match policies.may_invoke(&env.user, &env.scenario, p.name(), now) {
            Ok((true, _)) => rows.push(p.clone()),
            Ok((false, _)) => {}
            // Fail closed: not listed, as it could not be called.
            Err(e) => tracing::warn!(product = p.name(), "cannot decide invoke: {e}"),
        }
    }
    let strings = |f: &dyn Fn(&super::Product) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|p| f(p))))
    };
    RecordBatch::try_new(
        listing_schema(),
        vec![
            strings(&|p| p.name().to_string()),
            strings(&|p| p.file.description.clone()),
            strings(&signature),
            strings(&|p| p.output_text()),
            Arc::new(Int64Array::from_iter_values(
                rows.iter()
                    .map(|p| p.file.max_rows.min(i64::MAX as u64) as i64),
            )),
            // Not the version: the SHA-256 of the file would confirm a guess of its SQL
            // (attacker round 23 L2).
        ],
    )
    .map_err(DataFusionError::from)
}
