//! The Flight SQL protocol over the gateway: a thin layer that authenticates every call, maps each
//! command to a gateway call, and binds tickets and prepared-statement handles to the caller.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    ActionCreatePreparedSubstraitPlanRequest, Any, Command, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

use gateway::{Gateway, Principal, Query};

use crate::auth::{AuthError, Sessions};
use crate::error::{read_only, to_status};
use crate::handles::{HandleKind, Handles};
use crate::limits::Limits;
use crate::metadata::{
    described, foreign_keys_schema, primary_keys_schema, sql_info, xdbc_type_info,
};
use crate::session_options::{self as so, OptionValue, SessionOptionValue};
use caller::{client, Caller};
use listing::Listing;

mod caller;
mod listing;
mod parameters;
mod query;
mod schema;
mod session;

/// The header that sets the scenario for one call (overrides the session option).
pub const SCENARIO_HEADER: &str = "x-lakegate-scenario";
/// The session option that sets the scenario.
pub const SCENARIO_OPTION: &str = "scenario";
/// The session option of the current catalog (ADBC's `adbc_current_catalog`): always the lake.
pub const CATALOG_OPTION: &str = "catalog";

pub(crate) type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// The lakegate Flight SQL service.
pub struct LakegateService {
    gateway: Arc<Gateway>,
    sessions: Arc<Sessions>,
    handles: Handles<Query>,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
    limits: Limits,
}

impl LakegateService {
    /// A service over `gateway`, authenticating against `sessions`.
    pub fn new(
        gateway: Arc<Gateway>,
        sessions: Arc<Sessions>,
        handle_ttl: Duration,
        limits: Limits,
    ) -> Self {
        Self {
            handles: Handles::new(handle_ttl, limits.max_handle_bytes()),
            limits,
            gateway,
            sessions,
            sql_info: sql_info(),
            xdbc: xdbc_type_info(),
        }
    }
}

/// A login failure as a status: a scenario the session is pinned to is a denial.
pub(crate) fn auth_status(e: AuthError) -> Status {
    match e {
        AuthError::Pinned(_) => Status::permission_denied(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The IPC bytes of a schema, as FlightInfo and prepared-statement results carry it.
fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| internal("cannot encode schema", e))?;
    Ok(bytes)
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| internal("cannot encode schema", e))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

fn one_batch(batch: RecordBatch) -> DoGetStream {
    let schema = batch.schema();
    let stream = futures::stream::once(async move { Ok(batch) });
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream)
            .map_err(Status::from),
    )
}

fn action_result(body: Vec<u8>) -> Response<<LakegateService as FlightService>::DoActionStream> {
    let out = futures::stream::once(async move { Ok(arrow_flight::Result { body: body.into() }) });
    Response::new(Box::pin(out))
}

#[tonic::async_trait]
impl FlightSqlService for LakegateService {
    type FlightService = LakegateService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the handshake needs basic credentials: authorization: Basic base64(user:password)",
                )
            })?;
        let (scheme, encoded) = header.split_once(' ').unwrap_or(("", ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(Status::unauthenticated(
                "the handshake needs basic credentials: authorization: Basic base64(user:password)",
            ));
        }
        let (user, password) = crate::auth::basic_credentials(encoded).ok_or_else(|| {
            Status::unauthenticated("the basic credentials are not base64 of user:password")
        })?;
        let logged_user = user.clone();
        let client_ip = crate::connections::peer(&request).map(|a| a.ip());
        let token = self
            .sessions
            .authenticate(&user, &password, client_ip)
            .await
            .map_err(|e| {
                tracing::info!(user = %logged_user, "login refused: {e}");
                match e {
                    AuthError::Busy => Status::unavailable(e.to_string()),
                    AuthError::Throttled(_) => Status::resource_exhausted(e.to_string()),
                    other => auth_status(other),
                }
            })?;
        tracing::info!(user = %logged_user, "login");
        let bearer = format!("Bearer {token}");
        let output = futures::stream::once(async move {
            Ok(HandshakeResponse {
                protocol_version: 0,
                payload: token.into_bytes().into(),
            })
        });
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(output));
        response.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(bearer).map_err(|e| internal("bad token", e))?,
        );
        Ok(response)
    }

    // ---- statements ---------------------------------------------------------------------

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let planned = self.plan(&caller, &query.query, client(&request)).await?;
        let schema = described(&planned.schema(), None);
        let handle = self.handles.store(
            &caller.token,
            &caller.principal,
            &query.query,
            planned.footprint(),
            HandleKind::Statement(planned),
        )?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        flight_info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        // A statement ticket is read once.
        let query = self
            .handles
            .take_statement(&caller.principal, &ticket.statement_handle)?;
        self.execute(&caller, &query).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        let planned = self.plan(&caller, &query.query, client(&request)).await?;
        let dataset_schema = schema_bytes(&described(&planned.schema(), None))?;
        let parameter_schema = schema_bytes(&planned.parameter_schema())?;
        let handle = self.handles.store(
            &caller.token,
            &caller.principal,
            &query.query,
            planned.footprint(),
            HandleKind::Prepared {
                query: planned,
                bound: None,
            },
        )?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.bind_parameters(query, request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(&request)?;
        let query = self
            .handles
            .prepared(&caller.principal, &cmd.prepared_statement_handle)?;
        flight_info(
            &described(&query.schema(), None),
            cmd.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = self.caller(&request)?;
        let query = self
            .handles
            .prepared(&caller.principal, &cmd.prepared_statement_handle)?;
        self.execute(&caller, &query).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        cmd: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let caller = self.caller(&request)?;
        self.handles
            .close(&caller.principal, &cmd.prepared_statement_handle)
    }

    // ---- metadata -------------------------------------------------------------------------

    async fn get_flight_info_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::Catalogs(cmd), request)
    }

    async fn do_get_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::Catalogs(cmd), request).await
    }

    async fn get_flight_info_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::DbSchemas(cmd), request)
    }

    async fn do_get_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::DbSchemas(cmd), request).await
    }

    async fn get_flight_info_tables(
        &self,
        cmd: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::Tables(cmd), request)
    }

    async fn do_get_tables(
        &self,
        cmd: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::Tables(cmd), request).await
    }

    async fn get_flight_info_table_types(
        &self,
        cmd: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::TableTypes(cmd), request)
    }

    async fn do_get_table_types(
        &self,
        cmd: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::TableTypes(cmd), request).await
    }

    async fn get_flight_info_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::SqlInfo(cmd), request)
    }

    async fn do_get_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::SqlInfo(cmd), request).await
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::XdbcTypeInfo(cmd), request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::XdbcTypeInfo(cmd), request).await
    }

    // ---- keys: none declared ------------------------------------------------------------

    async fn get_flight_info_primary_keys(
        &self,
        cmd: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::PrimaryKeys(cmd), request)
    }

    async fn do_get_primary_keys(
        &self,
        cmd: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::PrimaryKeys(cmd), request).await
    }

    async fn get_flight_info_exported_keys(
        &self,
        cmd: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::ExportedKeys(cmd), request)
    }

    async fn do_get_exported_keys(
        &self,
        cmd: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::ExportedKeys(cmd), request).await
    }

    async fn get_flight_info_imported_keys(
        &self,
        cmd: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::ImportedKeys(cmd), request)
    }

    async fn do_get_imported_keys(
        &self,
        cmd: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::ImportedKeys(cmd), request).await
    }

    async fn get_flight_info_cross_reference(
        &self,
        cmd: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.listing_info(Listing::CrossReference(cmd), request)
    }

    async fn do_get_cross_reference(
        &self,
        cmd: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(Listing::CrossReference(cmd), request).await
    }

    // ---- session options ------------------------------------------------------------------

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let caller = self.caller(&request)?;
        let action = request.into_inner();
        match action.r#type.as_str() {
            so::SET_SESSION_OPTIONS => self.set_session_options(&caller, &action.body),
            so::GET_SESSION_OPTIONS => self.get_session_options(&caller),
            so::CLOSE_SESSION => {
                self.sessions.close(&caller.token);
                self.handles.close_session(&caller.token);
                let result = so::CloseSessionResult {
                    status: so::SESSION_CLOSED,
                };
                Ok(action_result(result.encode_to_vec()))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action `{other}`"
            ))),
        }
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(
            [
                (so::SET_SESSION_OPTIONS, "Set session options (`scenario`)."),
                (so::GET_SESSION_OPTIONS, "Get session options."),
                (
                    so::CLOSE_SESSION,
                    "Close the session: the bearer token stops working.",
                ),
            ]
            .into_iter()
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: t.to_string(),
                    description: d.to_string(),
                })
            })
            .collect(),
        )
    }

    // ---- everything that writes or is not offered ----------------------------------------

    async fn do_put_statement_update(
        &self,
        _cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.caller(&request)?;
        Err(read_only("an update statement"))
    }

    async fn do_put_statement_ingest(
        &self,
        _cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.caller(&request)?;
        Err(read_only("bulk ingestion"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.caller(&request)?;
        Err(read_only("a prepared update"))
    }

    async fn do_put_substrait_plan(
        &self,
        _cmd: CommandStatementSubstraitPlan,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.caller(&request)?;
        Err(read_only("a Substrait plan"))
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        _message: Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        self.caller(&request)?;
        Err(read_only("DoPut"))
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _cmd: CommandStatementSubstraitPlan,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        Err(Status::unimplemented(
            "Substrait plans are not accepted: send SQL",
        ))
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _cmd: ActionCreatePreparedSubstraitPlanRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.caller(&request)?;
        Err(Status::unimplemented(
            "Substrait plans are not accepted: send SQL",
        ))
    }

    async fn do_action_begin_transaction(
        &self,
        _cmd: ActionBeginTransactionRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        self.caller(&request)?;
        Err(read_only("a transaction"))
    }

    async fn do_action_begin_savepoint(
        &self,
        _cmd: ActionBeginSavepointRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        self.caller(&request)?;
        Err(read_only("a savepoint"))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
