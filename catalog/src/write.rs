//! Writing Delta tables: the tables lakegate itself keeps in the lake (the audit export) and the
//! demo's. Departments write their own tables; lakegate only reads those.

use std::collections::HashMap;

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;

use crate::{CatalogError, SUBJECT_KEY_PROPERTY};

fn failed(url: &url::Url, e: deltalake::DeltaTableError) -> CatalogError {
    CatalogError::Write {
        url: url.to_string(),
        source: Box::new(e),
    }
}

/// Writes `batch` to the Delta table at `url` with `mode`, creating the table on first write.
pub async fn write_table(
    url: url::Url,
    options: HashMap<String, String>,
    batch: RecordBatch,
    mode: SaveMode,
) -> Result<DeltaTable, CatalogError> {
    // Load only a table that exists: loading a missing one makes delta-kernel log an error.
    let mut table = deltalake::DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| failed(&url, e))?
        .with_storage_options(options)
        .build()
        .map_err(|e| failed(&url, e))?;
    if table
        .verify_deltatable_existence()
        .await
        .map_err(|e| failed(&url, e))?
    {
        table.load().await.map_err(|e| failed(&url, e))?;
    }
    let write = table.write(vec![batch]).with_save_mode(mode);
    // An append may bring columns a newer lakegate added (the audit export's): the table
    // gains them, older rows read NULL there.
    let write = if mode == SaveMode::Append {
        write.with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
    } else {
        write
    };
    write.await.map_err(|e| failed(&url, e))
}

/// Replaces the table at `url` by `batch` and names its subject key in the table property
/// [`SUBJECT_KEY_PROPERTY`] (a second commit).
pub async fn write_subject_table(
    url: url::Url,
    options: HashMap<String, String>,
    batch: RecordBatch,
    subject_key: &str,
) -> Result<DeltaTable, CatalogError> {
    let table = write_table(url.clone(), options, batch, SaveMode::Overwrite).await?;
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            SUBJECT_KEY_PROPERTY.to_string(),
            subject_key.to_string(),
        )]))
        .with_raise_if_not_exists(false)
        .await
        .map_err(|e| failed(&url, e))
}
