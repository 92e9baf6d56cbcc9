//! Flight SQL's metadata commands (catalogs, schemas, tables, table types, SqlInfo, XDBC types,
//! keys), each decoded once into a [`Listing`] and answered from one place, for GetFlightInfo
//! and DoGet alike.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::sql::metadata::{GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, ProstMessageExt,
};
use arrow_flight::{FlightDescriptor, FlightInfo, Ticket};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{client, flight_info, internal, one_batch, Caller, DoGetStream, LakegateService};
use crate::error::to_status;
use crate::metadata::{described, foreign_keys_schema, primary_keys_schema, TABLE_TYPE};

/// The longest name or pattern a listing takes (lake names are far shorter): the patterns
/// become regular expressions, and a 15 MB one took 7.5 GB to be refused (round 29 H1).
const MAX_FILTER_BYTES: usize = 1 << 10;

/// The most SqlInfo ids or table types one listing asks for (Flight SQL defines a few hundred).
const MAX_FILTER_ITEMS: usize = 1 << 10;

/// One metadata command of Flight SQL.
pub(crate) enum Listing {
    Catalogs(CommandGetCatalogs),
    DbSchemas(CommandGetDbSchemas),
    Tables(CommandGetTables),
    TableTypes(CommandGetTableTypes),
    SqlInfo(CommandGetSqlInfo),
    XdbcTypeInfo(CommandGetXdbcTypeInfo),
    PrimaryKeys(CommandGetPrimaryKeys),
    ExportedKeys(CommandGetExportedKeys),
    ImportedKeys(CommandGetImportedKeys),
    CrossReference(CommandGetCrossReference),
}

impl Listing {
    /// The schema of the listing's one batch.
    fn schema(&self, service: &LakegateService) -> SchemaRef {
        match self {
            Self::Catalogs(c) => (*c).into_builder().schema(),
            Self::DbSchemas(c) => c.clone().into_builder().schema(),
            Self::Tables(c) => c.clone().into_builder().schema(),
            Self::TableTypes(c) => (*c).into_builder().schema(),
            Self::SqlInfo(c) => c.clone().into_builder(&service.sql_info).schema(),
            Self::XdbcTypeInfo(c) => (*c).into_builder(&service.xdbc).schema(),
            Self::PrimaryKeys(_) => primary_keys_schema(),
            Self::ExportedKeys(_) | Self::ImportedKeys(_) | Self::CrossReference(_) => {
                foreign_keys_schema()
            }
        }
    }

    /// Refuses filters past [`MAX_FILTER_BYTES`] or [`MAX_FILTER_ITEMS`], before any work.
    fn bounded(&self) -> Result<(), Status> {
        let (texts, items): (Vec<Option<&String>>, usize) = match self {
            Self::DbSchemas(c) => (
                vec![c.catalog.as_ref(), c.db_schema_filter_pattern.as_ref()],
                0,
            ),
            Self::Tables(c) => {
                let mut texts = vec![
                    c.catalog.as_ref(),
                    c.db_schema_filter_pattern.as_ref(),
                    c.table_name_filter_pattern.as_ref(),
                ];
                texts.extend(c.table_types.iter().map(Some));
                (texts, c.table_types.len())
            }
            Self::SqlInfo(c) => (vec![], c.info.len()),
            _ => (vec![], 0),
        };
        if texts
            .into_iter()
            .flatten()
            .any(|t| t.len() > MAX_FILTER_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "a listing's catalog, schema or table name pattern is at most {MAX_FILTER_BYTES} bytes"
            )));
        }
        if items > MAX_FILTER_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a listing asks for at most {MAX_FILTER_ITEMS} SqlInfo ids or table types"
            )));
        }
        Ok(())
    }

    /// The ticket that asks for the listing again: the command itself.
    fn ticket(&self) -> Vec<u8> {
        match self {
            Self::Catalogs(c) => c.as_any().encode_to_vec(),
            Self::DbSchemas(c) => c.as_any().encode_to_vec(),
            Self::Tables(c) => c.as_any().encode_to_vec(),
            Self::TableTypes(c) => c.as_any().encode_to_vec(),
            Self::SqlInfo(c) => c.as_any().encode_to_vec(),
            Self::XdbcTypeInfo(c) => c.as_any().encode_to_vec(),
            Self::PrimaryKeys(c) => c.as_any().encode_to_vec(),
            Self::ExportedKeys(c) => c.as_any().encode_to_vec(),
            Self::ImportedKeys(c) => c.as_any().encode_to_vec(),
            Self::CrossReference(c) => c.as_any().encode_to_vec(),
        }
    }

    /// The name on the audit trail of the listings that show what the caller may query.
    fn audited_as(&self) -> Option<&'static str> {
        match self {
            Self::DbSchemas(_) => Some("GetDbSchemas"),
            Self::Tables(_) => Some("GetTables"),
            _ => None,
        }
    }

    /// The listing for `caller`: lake objects are the ones the caller may query; no keys are
    /// declared.
    async fn batch(
        self,
        service: &LakegateService,
        caller: &Caller,
    ) -> Result<RecordBatch, Status> {
        match self {
            Self::Catalogs(_) => {
                let mut builder = GetCatalogsBuilder::new();
                builder.append(catalog::LAKE_CATALOG);
                builder
                    .build()
                    .map_err(|e| internal("cannot list catalogs", e))
            }
            Self::DbSchemas(cmd) => {
                let tables = service.visible(caller).await?;
                let mut builder: GetDbSchemasBuilder = cmd.into_builder();
                let mut seen = std::collections::BTreeSet::new();
                for t in &tables {
                    if seen.insert(t.table.schema.clone()) {
                        builder.append(catalog::LAKE_CATALOG, &t.table.schema);
                    }
                }
                builder
                    .build()
                    .map_err(|e| internal("cannot list schemas", e))
            }
            Self::Tables(cmd) => {
                let tables = service.visible(caller).await?;
                let mut builder: GetTablesBuilder = cmd.into_builder();
                for t in &tables {
                    builder
                        .append(
                            catalog::LAKE_CATALOG,
                            &t.table.schema,
                            &t.table.table,
                            TABLE_TYPE,
                            &described(&t.schema, Some((&t.table.schema, &t.table.table))),
                        )
                        .map_err(|e| internal("cannot list tables", e))?;
                }
                builder
                    .build()
                    .map_err(|e| internal("cannot list tables", e))
            }
            Self::TableTypes(cmd) => {
                let mut builder = cmd.into_builder();
                builder.append(TABLE_TYPE);
                builder
                    .build()
                    .map_err(|e| internal("cannot list table types", e))
            }
            Self::SqlInfo(cmd) => cmd
                .into_builder(&service.sql_info)
                .build()
                .map_err(|e| internal("cannot build SqlInfo", e)),
            Self::XdbcTypeInfo(cmd) => cmd
                .into_builder(&service.xdbc)
                .build()
                .map_err(|e| internal("cannot build XdbcTypeInfo", e)),
            keys => Ok(RecordBatch::new_empty(keys.schema(service))),
        }
    }
}

impl LakegateService {
    /// GetFlightInfo of a listing: its schema and a ticket that is the command.
    pub(super) fn listing_info(
        &self,
        listing: Listing,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        listing.bounded()?;
        flight_info(
            &listing.schema(self),
            listing.ticket(),
            request.into_inner(),
        )
    }

    /// DoGet of a listing; listings of what the caller may query go on the audit trail (a
    /// failing write refuses the request).
    pub(super) async fn listing(
        &self,
        listing: Listing,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        listing.bounded()?;
        let audited = listing.audited_as();
        let batch = listing.batch(self, &caller).await;
        if let Some(name) = audited {
            let outcome = match &batch {
                Ok(b) => Ok(b.num_rows() as u64),
                Err(s) => Err(s.message().to_string()),
            };
            self.gateway
                .record_metadata(&caller.principal, name, client(&request), outcome)
                .map_err(to_status)?;
        }
        Ok(Response::new(one_batch(batch?)))
    }
}
