//! The codec that ships a plan with its secure scans (and minimum-group releases) to another
//! process: a scan travels as its [`ScanSpec`] (its serde form, `Wire`), never as the Delta scan
//! it wraps, and is planned again on arrival.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::from_proto::parse_exprs;
use datafusion_proto::logical_plan::to_proto::serialize_exprs;
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::LogicalExprNode;
use prost::Message;
use serde::{Deserialize, Serialize};

use policy::{Mask, Predicate};

use super::secure_exec::{ScanSpec, SecureScanExec};

/// What [`SecureScanCodec`] writes: a secure scan, or a minimum-group release over its child.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Node {
    Scan(Box<Wire>),
    Release {
        checks: Vec<crate::enforce::min_group::Check>,
        global: bool,
    },
}

/// A secure scan as [`SecureScanCodec`] writes it.
#[derive(Serialize, Deserialize)]
pub(super) struct Wire {
    table: String,
    url: String,
    version: u64,
    raw_projection: Vec<usize>,
    filters: Vec<Vec<u8>>,
    limit: Option<usize>,
    predicate: Option<Predicate>,
    outputs: Vec<(String, Option<Mask>)>,
    partitions: usize,
    #[serde(default)]
    repartition: Option<usize>,
    /// Absent from plans encoded before it existed, whose scans used delta-rs's default (on).
    #[serde(default = "pushdown_unless_said")]
    parquet_pushdown: bool,
    /// The output schema as an Arrow IPC stream with no batches.
    schema: Vec<u8>,
}

pub(super) fn pushdown_unless_said() -> bool {
    true
}

/// Serializes and deserializes [`SecureScanExec`]. An executor builds it with its own mask key
/// and storage options; neither travels with the plan.
#[derive(Default)]
pub struct SecureScanCodec {
    mask_key: Option<Arc<[u8]>>,
    storage: Arc<HashMap<String, String>>,
}

impl fmt::Debug for SecureScanCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecureScanCodec")
    }
}

impl SecureScanCodec {
    /// A codec for a process with this mask key and these delta-rs storage options.
    pub fn new(mask_key: Option<&[u8]>, storage: HashMap<String, String>) -> Self {
        Self {
            mask_key: mask_key.map(Arc::from),
            storage: Arc::new(storage),
        }
    }
}

pub(super) fn codec_err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("secure scan codec: {e}"))
}

impl PhysicalExtensionCodec for SecureScanCodec {
    fn try_decode_udf(
        &self,
        name: &str,
        _buf: &[u8],
    ) -> Result<Arc<datafusion::logical_expr::ScalarUDF>> {
        Err(codec_err(format!("unknown function {name}")))
    }

    fn try_encode_udf(
        &self,
        node: &datafusion::logical_expr::ScalarUDF,
        _buf: &mut Vec<u8>,
    ) -> Result<()> {
        // Built-in functions travel by name.
        let _ = node;
        Ok(())
    }

    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wire = match serde_json::from_slice(buf).map_err(codec_err)? {
            Node::Scan(wire) if inputs.is_empty() => *wire,
            Node::Release { checks, global } => {
                let [input] = inputs else {
                    return Err(codec_err("a release has one input"));
                };
                // The count of withheld groups stays with the process that runs it.
                return Ok(Arc::new(crate::MinGroupReleaseExec::try_new(
                    input.clone(),
                    checks,
                    global,
                    crate::Suppressed::default(),
                )?));
            }
            Node::Scan(_) => return Err(codec_err("a secure scan has no inputs")),
        };
        let nodes = wire
            .filters
            .iter()
            .map(|b| LogicalExprNode::decode(b.as_slice()).map_err(codec_err))
            .collect::<Result<Vec<_>>>()?;
        let filters = parse_exprs(&nodes, ctx, &DefaultLogicalExtensionCodec {})?;
        let reader = StreamReader::try_new(wire.schema.as_slice(), None)?;
        let schema = reader.schema();
        let spec = ScanSpec {
            table: wire.table,
            url: url::Url::parse(&wire.url).map_err(codec_err)?,
            version: wire.version,
            raw_projection: wire.raw_projection,
            filters,
            limit: wire.limit,
            predicate: wire.predicate,
            outputs: wire.outputs,
            partitions: wire.partitions,
            repartition: wire.repartition,
            parquet_pushdown: wire.parquet_pushdown,
            accelerated: None,
        };
        Ok(Arc::new(SecureScanExec::new(
            spec,
            schema,
            self.mask_key.clone(),
            self.storage.clone(),
            None,
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let any: &dyn std::any::Any = node.as_ref();
        if let Some(release) = any.downcast_ref::<crate::MinGroupReleaseExec>() {
            let (checks, global) = release.wire();
            return serde_json::to_writer(buf, &Node::Release { checks, global })
                .map_err(codec_err);
        }
        let exec = any
            .downcast_ref::<SecureScanExec>()
            .ok_or_else(|| codec_err(format!("cannot encode {}", node.name())))?;
        let spec = &exec.spec;
        let filters = serialize_exprs(&spec.filters, &DefaultLogicalExtensionCodec {})?
            .into_iter()
            .map(|n| n.encode_to_vec())
            .collect();
        let mut schema = Vec::new();
        StreamWriter::try_new(&mut schema, &exec.schema)?.finish()?;
        let wire = Wire {
            table: spec.table.clone(),
            url: spec.url.to_string(),
            version: spec.version,
            raw_projection: spec.raw_projection.clone(),
            filters,
            limit: spec.limit,
            predicate: spec.predicate.clone(),
            outputs: spec.outputs.clone(),
            partitions: spec.partitions,
            repartition: spec.repartition,
            parquet_pushdown: spec.parquet_pushdown,
            schema,
        };
        serde_json::to_writer(buf, &Node::Scan(Box::new(wire))).map_err(codec_err)
    }
}
