//! Flight's GetSchema: the schema a command's results have, without running it.

use super::*;

impl LakegateService {
    pub(super) async fn visible(
        &self,
        caller: &Caller,
    ) -> Result<Vec<gateway::VisibleTable>, Status> {
        self.gateway
            .visible_tables(&caller.principal)
            .await
            .map_err(to_status)
    }

    /// The schema a command's results have, without running it (Flight's GetSchema). A
    /// statement is planned and decided as for GetFlightInfo.
    pub(crate) async fn schema_of(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<arrow::datatypes::SchemaRef, Status> {
        let caller = self.caller(&request)?;
        let client = client(&request);
        let not_a_command = |e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!(
                "GetSchema takes a Flight SQL command descriptor: {e}"
            ))
        };
        let any = Any::decode(&*request.get_ref().cmd).map_err(|e| not_a_command(&e))?;
        let command = Command::try_from(any).map_err(|e| not_a_command(&e))?;
        Ok(match command {
            Command::CommandStatementQuery(q) => {
                let planned = self.plan(&caller, &q.query, client).await?;
                Arc::new(described(&planned.schema(), None))
            }
            Command::CommandPreparedStatementQuery(c) => {
                let query = self
                    .handles
                    .prepared(&caller.principal, &c.prepared_statement_handle)?;
                Arc::new(described(&query.schema(), None))
            }
            Command::CommandGetCatalogs(c) => c.into_builder().schema(),
            Command::CommandGetDbSchemas(c) => c.into_builder().schema(),
            Command::CommandGetTables(c) => c.into_builder().schema(),
            Command::CommandGetTableTypes(c) => c.into_builder().schema(),
            Command::CommandGetSqlInfo(c) => c.into_builder(&self.sql_info).schema(),
            Command::CommandGetXdbcTypeInfo(c) => c.into_builder(&self.xdbc).schema(),
            Command::CommandGetPrimaryKeys(_) => primary_keys_schema(),
            Command::CommandGetExportedKeys(_)
            | Command::CommandGetImportedKeys(_)
            | Command::CommandGetCrossReference(_) => foreign_keys_schema(),
            other => {
                return Err(Status::invalid_argument(format!(
                    "GetSchema does not describe {}: lakegate is read-only",
                    other.type_url()
                )))
            }
        })
    }
}
