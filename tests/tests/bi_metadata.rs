//! What BI tools and JDBC/ADBC drivers ask before they query: GetSchema for statements,
//! prepared statements and metadata commands; Flight SQL column metadata on result and table
//! schemas; empty key listings; the SqlInfo keys the Arrow JDBC driver reads.

use arrow::datatypes::Schema;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetCrossReference, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetTables, CommandStatementQuery, ProstMessageExt, SqlInfo,
};
use arrow_flight::FlightDescriptor;
use lakegate_tests::{as_user, fetch, rows, TestServer};
use prost::Message;
use tonic::transport::Channel;

const TYPE_NAME: &str = "ARROW:FLIGHT:SQL:TYPE_NAME";
const TABLE_NAME: &str = "ARROW:FLIGHT:SQL:TABLE_NAME";

/// Flight's GetSchema for a Flight SQL command, sent with the client's token.
async fn get_schema(
    c: &mut FlightSqlServiceClient<Channel>,
    cmd: impl ProstMessageExt,
) -> Result<Schema, String> {
    let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
    let mut request = tonic::Request::new(descriptor);
    let token = c.token().cloned().expect("logged in");
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let result = c
        .inner_mut()
        .get_schema(request)
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    Schema::try_from(&result).map_err(|e| e.to_string())
}

fn type_names(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| f.metadata().get(TYPE_NAME).cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn get_schema_describes_statements_prepared_statements_and_metadata_commands() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let sql = "SELECT credit_code, registered_capital, established FROM market.enterprises";
    let statement = get_schema(
        &mut c,
        CommandStatementQuery {
            query: sql.into(),
            transaction_id: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(statement.fields().len(), 3);
    assert_eq!(type_names(&statement), ["VARCHAR", "DECIMAL", "DATE"]);
    let capital = statement.field(1).metadata();
    assert!(
        capital.contains_key("ARROW:FLIGHT:SQL:PRECISION"),
        "{capital:?}"
    );
    assert!(
        capital.contains_key("ARROW:FLIGHT:SQL:SCALE"),
        "{capital:?}"
    );

    // The schema GetFlightInfo announces and the stream carries say the same.
    let info = c.execute(sql.into(), None).await.unwrap();
    let announced = Schema::try_from(info.clone()).unwrap();
    assert_eq!(type_names(&announced), type_names(&statement));
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(type_names(&batches[0].schema()), type_names(&statement));

    let prepared = c.prepare(sql.into(), None).await.unwrap();
    let dataset = prepared.dataset_schema().unwrap();
    assert_eq!(type_names(dataset), type_names(&statement));

    // Metadata commands describe their own result schemas.
    let tables = get_schema(&mut c, CommandGetTables::default())
        .await
        .unwrap();
    assert!(tables.field_with_name("table_name").is_ok());
    let keys = get_schema(
        &mut c,
        CommandGetPrimaryKeys {
            catalog: None,
            db_schema: None,
            table: "enterprises".into(),
        },
    )
    .await
    .unwrap();
    assert!(keys.field_with_name("key_sequence").is_ok());

    // A statement GetSchema is decided as a query is: what the user cannot read is not found.
    let hidden = get_schema(
        &mut c,
        CommandStatementQuery {
            query: "SELECT * FROM health.visits".into(),
            transaction_id: None,
        },
    )
    .await
    .unwrap_err();
    assert!(hidden.contains("not found"), "{hidden}");
}

#[tokio::test]
async fn table_schemas_carry_sql_types_and_keys_are_empty_listings() {
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let info = c
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    let column = batches[0]
        .column_by_name("table_schema")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&column).unwrap();
    for field in schema.fields() {
        let m = field.metadata();
        assert!(
            !m.get(TYPE_NAME).cloned().unwrap_or_default().is_empty(),
            "{field:?}"
        );
        assert!(
            !m.get(TABLE_NAME).cloned().unwrap_or_default().is_empty(),
            "{field:?}"
        );
        assert_eq!(
            m.get("ARROW:FLIGHT:SQL:CATALOG_NAME").map(String::as_str),
            Some("lake")
        );
    }

    let pk = c
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("market".into()),
            table: "enterprises".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, pk).await.unwrap()), 0);
    let exported = c
        .get_exported_keys(CommandGetExportedKeys {
            catalog: None,
            db_schema: None,
            table: "enterprises".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, exported).await.unwrap()), 0);
    let imported = c
        .get_imported_keys(CommandGetImportedKeys {
            catalog: None,
            db_schema: None,
            table: "enterprises".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, imported).await.unwrap()), 0);
    let cross = c
        .get_cross_reference(CommandGetCrossReference {
            pk_catalog: None,
            pk_db_schema: None,
            pk_table: "enterprises".into(),
            fk_catalog: None,
            fk_db_schema: None,
            fk_table: "penalties".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, cross).await.unwrap()), 0);

    // The SqlInfo keys the Arrow JDBC driver reads are answered, not missing.
    let wanted = [
        SqlInfo::SqlKeywords,
        SqlInfo::SqlNumericFunctions,
        SqlInfo::SqlSupportsConvert,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlSupportedResultSetTypes,
        SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported,
    ];
    let info = c.get_sql_info(wanted.to_vec()).await.unwrap();
    let got = fetch(&mut c, info).await.unwrap();
    assert_eq!(rows(&got), wanted.len());
}

/// Attacker round 29 H1: a 15 MB table name pattern took 7.5 GB (and aborted a server with
/// less memory) before it was refused; 15 M SqlInfo ids 2.8 GB. Filters are bounded before
/// any work, at GetFlightInfo and at DoGet of a hand-made ticket alike.
#[tokio::test]
async fn oversized_listing_filters_are_refused_before_any_work() {
    use arrow_flight::sql::{CommandGetDbSchemas, CommandGetSqlInfo};
    use arrow_flight::Ticket;
    let server = TestServer::demo().await;
    let mut c = as_user(&server, "banker", "bank-credit").await;
    let long = "%a".repeat(1_000);
    let tables = CommandGetTables {
        table_name_filter_pattern: Some(long.clone()),
        ..Default::default()
    };
    let err = c.get_tables(tables.clone()).await.unwrap_err().to_string();
    assert!(err.contains("at most 1024 bytes"), "{err}");
    let tickets = [
        tables.as_any().encode_to_vec(),
        CommandGetDbSchemas {
            db_schema_filter_pattern: Some(long),
            ..Default::default()
        }
        .as_any()
        .encode_to_vec(),
        CommandGetSqlInfo {
            info: (0..2_000).collect(),
        }
        .as_any()
        .encode_to_vec(),
        CommandGetTables {
            table_types: vec!["TABLE".into(); 2_000],
            ..Default::default()
        }
        .as_any()
        .encode_to_vec(),
    ];
    for ticket in tickets {
        let err = match c.do_get(Ticket::new(ticket)).await {
            Err(e) => e.to_string(),
            Ok(s) => match futures::TryStreamExt::try_collect::<Vec<_>>(s).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("an oversized listing was answered"),
            },
        };
        assert!(err.contains("at most 1024"), "{err}");
    }
    // Within the bound, a pattern is a pattern.
    let count = |pattern: String| {
        let mut c = c.clone();
        async move {
            let info = c
                .get_tables(CommandGetTables {
                    table_name_filter_pattern: Some(pattern),
                    ..Default::default()
                })
                .await
                .unwrap();
            rows(&fetch(&mut c, info).await.unwrap())
        }
    };
    let all = count("%".into()).await;
    assert!(all >= 3, "{all}");
    assert_eq!(count("%".repeat(1_024)).await, all);
}
