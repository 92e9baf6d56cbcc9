//! What the server says about itself to BI tools: SqlInfo and XdbcTypeInfo.

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlSupportedCaseSensitivity, SupportedSqlGrammar, XdbcDataType,
    XdbcDatetimeSubcode,
};

/// The only table type lakegate serves.
pub const TABLE_TYPE: &str = "TABLE";

/// Keywords of DataFusion's dialect beyond SQL:2003's.
const KEYWORDS: &[&str] = &["EXPLAIN", "ILIKE", "QUALIFY", "SHOW", "UNNEST"];
const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "degrees", "exp", "floor", "ln",
    "log", "log10", "log2", "pi", "power", "radians", "round", "signum", "sin", "sqrt", "tan",
    "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "char_length",
    "chr",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "octet_length",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "to_hex",
    "translate",
    "trim",
    "upper",
];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "extract",
    "from_unixtime",
    "now",
    "to_date",
    "to_timestamp",
];

/// Server name, version, read-only, and the SQL dialect flags BI tools look for.
pub fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "lakegate");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        (1 << SupportedSqlGrammar::SqlMinimumGrammar as i32)
            | (1 << SupportedSqlGrammar::SqlCoreGrammar as i32),
    );
    // ANSI-92 entry level.
    b.append(SqlInfo::SqlAnsi92SupportedLevel, 1i32);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    // Every other key the Arrow JDBC driver's DatabaseMetaData reads (older drivers throw on
    // a missing one).
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlNullOrdering, 0i32); // NULLs sort high: last ascending
    b.append(SqlInfo::SqlKeywords, KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS);
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS);
    b.append(SqlInfo::SqlSystemFunctions, &[] as &[&str]);
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(
        SqlInfo::SqlSupportsConvert,
        std::collections::HashMap::<i32, Vec<i32>>::new(),
    );
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportedGroupBy, 0b11i32); // unrelated, beyond select
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(SqlInfo::SqlOuterJoinsSupportLevel, 2i32); // full outer joins
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlSupportedSubqueries, 0b111i32); // comparisons, EXISTS, IN
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlSupportedUnions, 0b11i32); // UNION, UNION ALL
    for key in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        b.append(key, 0i64); // 0: no fixed limit
    }
    b.append(
        SqlInfo::SqlMaxStatementLength,
        lake_config::DEFAULT_MAX_SQL_BYTES as i64,
    );
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, 0i32); // none
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 1i32); // none
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(SqlInfo::SqlSupportedResultSetTypes, 1i32 << 1); // forward only
    let read_only = 1i32 << 1;
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetUnspecified,
        read_only,
    );
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetForwardOnly,
        read_only,
    );
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollSensitive,
        0i32,
    );
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollInsensitive,
        0i32,
    );
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("static SqlInfo values are well typed")
}

/// The SQL types lakegate's tables use, for JDBC/ODBC type mapping.
pub fn xdbc_type_info() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let types: [(&str, XdbcDataType, Option<i32>, Option<&str>); 11] = [
        ("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None),
        ("TINYINT", XdbcDataType::XdbcTinyint, Some(3), None),
        ("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), None),
        ("INTEGER", XdbcDataType::XdbcInteger, Some(10), None),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(19), None),
        ("REAL", XdbcDataType::XdbcReal, Some(7), None),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(15), None),
        ("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), None),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None, Some("'")),
        ("DATE", XdbcDataType::XdbcDate, Some(10), Some("'")),
        (
            "TIMESTAMP",
            XdbcDataType::XdbcTimestamp,
            Some(29),
            Some("'"),
        ),
    ];
    for (name, data_type, size, quote) in types {
        let datetime_subcode = match data_type {
            XdbcDataType::XdbcDate => Some(XdbcDatetimeSubcode::XdbcSubcodeYear),
            XdbcDataType::XdbcTimestamp => Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
            _ => None,
        };
        let numeric = size.is_some() && quote.is_none();
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: size,
            literal_prefix: quote.map(Into::into),
            literal_suffix: quote.map(Into::into),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: name == "VARCHAR",
            searchable: Searchable::Full,
            unsigned_attribute: numeric.then_some(false),
            fixed_prec_scale: false,
            auto_increment: numeric.then_some(false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode,
            num_prec_radix: numeric.then_some(10),
            interval_precision: None,
        });
    }
    b.build().expect("static type infos are well formed")
}

/// Flight SQL's column metadata keys (`FlightSql.proto`, `CommandGetTables`).
pub mod keys {
    pub const CATALOG_NAME: &str = "ARROW:FLIGHT:SQL:CATALOG_NAME";
    pub const DB_SCHEMA_NAME: &str = "ARROW:FLIGHT:SQL:DB_SCHEMA_NAME";
    /// What the ADBC driver reads for `xdbc_scope_schema` (the spec's is `DB_SCHEMA_NAME`).
    pub const SCHEMA_NAME: &str = "ARROW:FLIGHT:SQL:SCHEMA_NAME";
    /// Not in the spec (the field's own nullability says it); for clients that read it. The
    /// ADBC driver 1.13 reads neither for `xdbc_is_nullable`.
    pub const IS_NULLABLE: &str = "ARROW:FLIGHT:SQL:IS_NULLABLE";
    pub const TABLE_NAME: &str = "ARROW:FLIGHT:SQL:TABLE_NAME";
    pub const TYPE_NAME: &str = "ARROW:FLIGHT:SQL:TYPE_NAME";
    pub const PRECISION: &str = "ARROW:FLIGHT:SQL:PRECISION";
    pub const SCALE: &str = "ARROW:FLIGHT:SQL:SCALE";
    pub const IS_AUTO_INCREMENT: &str = "ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT";
    pub const IS_CASE_SENSITIVE: &str = "ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE";
    pub const IS_READ_ONLY: &str = "ARROW:FLIGHT:SQL:IS_READ_ONLY";
    pub const IS_SEARCHABLE: &str = "ARROW:FLIGHT:SQL:IS_SEARCHABLE";
}

/// The SQL type name (as [`xdbc_type_info`] lists it), precision and scale of an Arrow type.
pub fn sql_type(t: &arrow::datatypes::DataType) -> (String, Option<i32>, Option<i32>) {
    use arrow::datatypes::{DataType::*, TimeUnit};
    let digits = |u: &TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    match t {
        Boolean => ("BOOLEAN".into(), Some(1), None),
        Int8 | UInt8 => ("TINYINT".into(), Some(3), Some(0)),
        Int16 | UInt16 => ("SMALLINT".into(), Some(5), Some(0)),
        Int32 | UInt32 => ("INTEGER".into(), Some(10), Some(0)),
        Int64 | UInt64 => ("BIGINT".into(), Some(19), Some(0)),
        Float16 | Float32 => ("REAL".into(), Some(7), None),
        Float64 => ("DOUBLE".into(), Some(15), None),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            ("DECIMAL".into(), Some(*p as i32), Some(*s as i32))
        }
        Utf8 | LargeUtf8 | Utf8View => ("VARCHAR".into(), None, None),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => ("VARBINARY".into(), None, None),
        Date32 | Date64 => ("DATE".into(), Some(10), None),
        Timestamp(u, _) => {
            let d = digits(u);
            (
                "TIMESTAMP".into(),
                Some(19 + if d > 0 { d + 1 } else { 0 }),
                Some(d),
            )
        }
        Dictionary(_, v) => sql_type(v),
        other => (other.to_string().to_uppercase(), None, None),
    }
}

/// `schema` with Flight SQL's column metadata on every field (the table's names when the
/// columns are one table's), beside what the fields already carry.
pub fn described(
    schema: &arrow::datatypes::Schema,
    table: Option<(&str, &str)>,
) -> arrow::datatypes::Schema {
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let (name, precision, scale) = sql_type(f.data_type());
            let mut m = f.metadata().clone();
            m.insert(keys::TYPE_NAME.into(), name.clone());
            if let Some(p) = precision {
                m.insert(keys::PRECISION.into(), p.to_string());
            }
            if let Some(s) = scale {
                m.insert(keys::SCALE.into(), s.to_string());
            }
            m.insert(keys::IS_AUTO_INCREMENT.into(), "0".into());
            m.insert(
                keys::IS_CASE_SENSITIVE.into(),
                if name == "VARCHAR" { "1" } else { "0" }.into(),
            );
            m.insert(keys::IS_READ_ONLY.into(), "1".into());
            m.insert(
                keys::IS_NULLABLE.into(),
                if f.is_nullable() { "1" } else { "0" }.into(),
            );
            m.insert(keys::IS_SEARCHABLE.into(), "1".into());
            if let Some((db_schema, table)) = table {
                m.insert(keys::CATALOG_NAME.into(), catalog::LAKE_CATALOG.into());
                m.insert(keys::DB_SCHEMA_NAME.into(), db_schema.into());
                m.insert(keys::SCHEMA_NAME.into(), db_schema.into());
                m.insert(keys::TABLE_NAME.into(), table.into());
            }
            f.as_ref().clone().with_metadata(m)
        })
        .collect();
    arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The schema of `GetPrimaryKeys` (Flight SQL): lakegate's tables declare none.
pub fn primary_keys_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The schema of `GetExportedKeys`, `GetImportedKeys` and `GetCrossReference` (Flight SQL).
pub fn foreign_keys_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let names = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    std::sync::Arc::new(Schema::new(vec![
        names("pk_catalog_name", true),
        names("pk_db_schema_name", true),
        names("pk_table_name", false),
        names("pk_column_name", false),
        names("fk_catalog_name", true),
        names("fk_db_schema_name", true),
        names("fk_table_name", false),
        names("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        names("fk_key_name", true),
        names("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}
