//! Data products (`policy-model.md` §7): approved queries that run with their own rights
//! (definer rights) and return only their output, called from SQL as
//! `SELECT * FROM <name>(arg, ...)`.
//!
//! - `mod.rs`: the loaded set ([`ProductSet`]): every product planned, at load, with the product
//!   as principal under each scenario that approves it; one that does not plan refuses the set.
//! - `call.rs`: the call in a user's plan: a relation planner ([`Calls`]) that turns
//!   `name(args)` into a [`ProductCall`] leaf, only for a product the session may `invoke`
//!   (any other name fails as an unknown function does).
//! - `listing.rs`: `lakegate.products`, the products the session may call.
//! - `batch.rs`: list parameters (a batch call), and what the gateway holds their output to.
//! - `exec.rs`: planning a call with the product as principal, through the same planning,
//!   secure scans and checks as any query, and running it behind a leaf
//!   ([`ProductCallExec`]) that hides the inner plan and holds its output to `max_rows`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::{DFSchema, DFSchemaRef};
use lake_config::products::{ParamType, ProductFile};

use crate::session::Sessions;
use crate::GatewayError;

mod batch;
mod call;
mod exec;
mod listing;

pub(crate) use batch::type_placeholders;

pub(crate) use call::{a_word, accepts_kind, Calls, ProductCall, PARAM_KIND_KEY, PARAM_NAME_KEY};
pub(crate) use exec::CallPlanner;
pub use exec::ProductCallExec;
pub(crate) use listing::{listing_schema, SessionCatalog, LISTING_SCHEMA, LISTING_TABLE};

/// One loaded product.
#[derive(Debug)]
pub(crate) struct Product {
    pub(crate) file: ProductFile,
    /// Each parameter's Arrow type, in call order.
    pub(crate) types: Vec<DataType>,
    /// Its output, qualified by its name, as planned at load.
    pub(crate) output: DFSchemaRef,
}

impl Product {
    /// The product's name.
    pub(crate) fn name(&self) -> &str {
        &self.file.name
    }

    /// `column type, ...` with the types as clients receive them.
    pub(crate) fn output_text(&self) -> String {
        crate::served_schema(self.output.as_arrow())
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The products a gateway serves, by name. Immutable; a reload builds a new one.
#[derive(Debug, Default)]
pub(crate) struct ProductSet {
    products: BTreeMap<String, Arc<Product>>,
    /// Files no scenario approves: read, not planned, callable by no one.
    unapproved: Vec<String>,
}

/// One data product as `lakegate product list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSummary {
    /// Its name.
    pub name: String,
    /// What it answers.
    pub description: String,
    /// `name type, ...`.
    pub parameters: String,
    /// `column type, ...`.
    pub output: String,
    /// Rows one call may return.
    pub max_rows: u64,
    /// SHA-256 of its file.
    pub version: String,
    /// The scenarios whose `products` approve it (empty: no one can call it).
    pub scenarios: Vec<String>,
}

impl crate::Gateway {
    /// The data products of `[products] dir`, each with the scenarios that approve it, by name.
    pub fn product_summaries(&self) -> Vec<ProductSummary> {
        let set = self.sessions.products();
        let policies = self.policies();
        let mut out: Vec<ProductSummary> = set
            .iter()
            .map(|p| ProductSummary {
                name: p.name().to_string(),
                description: p.file.description.clone(),
                parameters: call::signature(p),
                output: p.output_text(),
                max_rows: p.file.max_rows,
                version: p.file.version.clone(),
                scenarios: policies.scenarios_approving(p.name()),
            })
            .collect();
        out.extend(set.unapproved.iter().map(|name| ProductSummary {
            name: name.clone(),
            description: String::new(),
            parameters: String::new(),
            output: String::new(),
            max_rows: 0,
            version: String::new(),
            scenarios: Vec::new(),
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The product files of `[products] dir` (none without one).
pub(crate) fn read_files(dir: Option<&Path>) -> Result<Vec<ProductFile>, GatewayError> {
    match dir {
        None => Ok(Vec::new()),
        Some(dir) => lake_config::products::read_products(dir)
            .map_err(|e| GatewayError::Config(format!("data products: {e}"))),
    }
}

/// The product files of `dir` for a server: a file that does not read is logged and left
/// out — or, when `last` served a product of that name, its last good version is kept — so one
/// bad file does not stop a server or hold back the other products. A folder that does not
/// read is the error.
pub(crate) fn read_files_serving(
    dir: Option<&Path>,
    last: Option<&ProductSet>,
) -> Result<Vec<ProductFile>, GatewayError> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    // A folder taken away on a running server withdraws its products, as deleting each file
    // would (attacker round 25 L1: they kept serving). At start it is an error, as before.
    if last.is_some() && !dir.exists() {
        tracing::error!(
            "data products: the folder {} is gone: no data product can be called until it is back",
            dir.display()
        );
        return Ok(Vec::new());
    }
    let each = lake_config::products::read_products_each(dir)
        .map_err(|e| GatewayError::Config(format!("data products: {e}")))?;
    let mut files = Vec::new();
    for (path, read) in each {
        match read {
            Ok(file) => files.push(file),
            Err(e) => {
                let name = path.file_stem().map(|s| s.to_string_lossy().to_string());
                match last.zip(name).and_then(|(last, n)| last.get(&n)) {
                    Some(product) => {
                        tracing::error!("data products: {e}; its last good version keeps serving");
                        files.push(product.file.clone());
                    }
                    None => {
                        tracing::error!("data products: {e}; it cannot be called until it reads")
                    }
                }
            }
        }
    }
    Ok(files)
}

/// The Arrow type a parameter of `ty` is bound as.
pub(crate) fn arrow_type(ty: ParamType) -> DataType {
    match ty {
        ParamType::String => DataType::Utf8,
        ParamType::Int => DataType::Int64,
        ParamType::Decimal => DataType::Decimal128(38, 10),
        ParamType::Date => DataType::Date32,
        ParamType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ParamType::Bool => DataType::Boolean,
    }
}

impl ProductSet {
    /// How many products it holds.
    pub(crate) fn len(&self) -> usize {
        self.products.len()
    }

    /// Every product, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.products.values()
    }

    /// The product `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Product>> {
        self.products.get(name)
    }

    /// Checks and loads `files`: each product's name is not a function's, its parameters are
    /// exactly the `$name`s its SQL uses, and its SQL plans with the product as principal
    /// under every scenario whose `products` approve it (same output under each). The first
    /// product that fails is the error, naming its file.
    pub(crate) async fn load(
        files: Vec<ProductFile>,
        sessions: &Sessions,
    ) -> Result<ProductSet, GatewayError> {
        Self::load_with(files, sessions, None).await
    }

    /// [`ProductSet::load`] for a reload: a product that no longer plans (a policy change
    /// revoked what it reads, say) is left out and logged, and the others load. A revocation
    /// must take effect even when it breaks a product: refusing the whole reload kept the
    /// revoked access alive.
    /// A product whose edited file does not plan keeps its last good version, if that still
    /// plans under the new policies.
    pub(crate) async fn load_serving(
        files: Vec<ProductFile>,
        sessions: &Sessions,
        last: &ProductSet,
    ) -> ProductSet {
        // With a last set, failures are logged and left out, never returned.
        Self::load_with(files, sessions, Some(last))
            .await
            .unwrap_or_default()
    }

    /// The product files this set was loaded from (for a reload whose folder does not read).
    pub(crate) fn files(&self) -> Vec<ProductFile> {
        self.products.values().map(|p| p.file.clone()).collect()
    }

    /// Strict without `last` (the first failure is the error); else failures are left out.
    async fn load_with(
        files: Vec<ProductFile>,
        sessions: &Sessions,
        last: Option<&ProductSet>,
    ) -> Result<ProductSet, GatewayError> {
        let mut products = BTreeMap::new();
        let mut unapproved = Vec::new();
        for file in files {
            let name = file.name.clone();
            match Self::load_one(file, sessions).await {
                Ok(Some(product)) => {
                    products.insert(name, product);
                }
                Ok(None) => unapproved.push(name),
                Err(e) => {
                    let Some(last) = last else { return Err(e) };
                    let previous = last.get(&name).map(|p| p.file.clone());
                    let kept = match previous {
                        Some(file) => Self::load_one(file, sessions).await.ok().flatten(),
                        None => None,
                    };
                    match kept {
                        Some(product) => {
                            tracing::error!("{e}; its last good version keeps serving");
                            products.insert(name, product);
                        }
                        None => {
                            tracing::error!("{e}; it cannot be called until it plans again")
                        }
                    }
                }
            }
        }
        Ok(ProductSet {
            products,
            unapproved,
        })
    }

    /// One product checked and planned under every scenario that approves it; `None` when no
    /// scenario does.
    async fn load_one(
        file: ProductFile,
        sessions: &Sessions,
    ) -> Result<Option<Arc<Product>>, GatewayError> {
        let policies = sessions.policies();
        {
            let refuse = |why: String| {
                GatewayError::Config(format!(
                    "data product {} ({}): {why}",
                    file.name,
                    file.path.display()
                ))
            };
            if is_function(&sessions.template, &file.name) {
                return Err(refuse(format!(
                    "`{}` is the name of a built-in function; rename the file",
                    file.name
                )));
            }
            let scenarios = policies.scenarios_approving(&file.name);
            if scenarios.is_empty() {
                tracing::warn!(
                    product = %file.name,
                    "no scenario approves the data product (Scenario.products): no one can call it"
                );
                return Ok(None);
            }
            let mut output: Option<Schema> = None;
            for scenario in &scenarios {
                let planned = sessions.plan_product(&file, scenario).await.map_err(|e| {
                    refuse(format!(
                        "does not plan under its own grants in scenario {scenario}: {}",
                        e.client_text()
                    ))
                })?;
                check_params(&file, &planned.plan).map_err(&refuse)?;
                // Bound with typed NULLs, so that an output column that is a parameter has
                // its type (unbound, it has none, and every call would fail).
                let nulls: std::collections::HashMap<String, datafusion::common::ScalarValue> =
                    file.params
                        .iter()
                        .map(|p| {
                            datafusion::common::ScalarValue::try_from(&batch::param_type(p))
                                .map(|v| (p.name.clone(), v))
                        })
                        .collect::<Result<_, _>>()
                        .map_err(|e| refuse(e.strip_backtrace()))?;
                let bound = planned
                    .plan
                    .with_param_values(datafusion::common::ParamValues::from(nulls))
                    .map_err(|e| refuse(e.strip_backtrace()))?;
                let schema = output_schema(bound.schema().inner());
                match &output {
                    Some(first) if *first != schema => {
                        return Err(refuse(format!(
                            "its output differs between scenarios {} and {scenario}; give it \
                             the same grants in every scenario that approves it",
                            scenarios[0]
                        )))
                    }
                    _ => output = Some(schema),
                }
            }
            let output = output.expect("one scenario at least");
            if let Some(key) = &file.batch_key {
                if output.index_of(key).is_err() {
                    return Err(refuse(format!(
                        "[review] batch_key = \"{key}\": its output has no column {key}; a \
                         batch product repeats each value it answers about in a column named \
                         as the list"
                    )));
                }
            }
            let output = DFSchema::try_from_qualified_schema(file.name.as_str(), &output)
                .map_err(|e| refuse(e.strip_backtrace()))?;
            let types = file.params.iter().map(batch::param_type).collect();
            Ok(Some(Arc::new(Product {
                file,
                types,
                output: Arc::new(output),
            })))
        }
    }
}

impl Sessions {
    /// Plans `file`'s SQL with the product as principal under `scenario`, its list
    /// parameters typed; placeholders stay unbound.
    pub(crate) async fn plan_product(
        &self,
        file: &ProductFile,
        scenario: &str,
    ) -> Result<crate::session::Planned, GatewayError> {
        self.plan_read_typed(
            policy::Principal::Product(file.name.clone()),
            scenario,
            &file.sql,
            None,
            batch::typed_lists(file),
        )
        .await
    }
}

/// A product's output as a call serves it: its columns, each nullable.
pub(crate) fn output_schema(planned: &Schema) -> Schema {
    Schema::new(
        planned
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    )
}

/// Whether `name` is a function of the session template (a product of that name could not be
/// told apart from it, §7).
fn is_function(template: &datafusion::execution::SessionState, name: &str) -> bool {
    template.table_functions().contains_key(name)
        || template.scalar_functions().contains_key(name)
        || template.aggregate_functions().contains_key(name)
        || template.window_functions().contains_key(name)
}

/// The SQL's placeholders are exactly the declared parameters, by name (`$person_id`).
fn check_params(
    file: &ProductFile,
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Result<(), String> {
    let used = plan
        .get_parameter_fields()
        .map_err(|e| e.strip_backtrace())?;
    for name in used.keys() {
        let bare = name.strip_prefix('$').unwrap_or(name);
        if !file.params.iter().any(|p| p.name == bare) {
            return Err(format!(
                "its SQL uses {name}, which [params] does not declare (declare it, or write \
                 named parameters as $name)"
            ));
        }
    }
    for p in &file.params {
        if !used.contains_key(&format!("${}", p.name)) {
            return Err(format!(
                "[params] declares {}, which its SQL does not use as ${}",
                p.name, p.name
            ));
        }
    }
    Ok(())
}

impl crate::Gateway {
    /// Calls the data product `name` as `who` with `args` (text, cast to each parameter's
    /// type), as a client's `SELECT * FROM name(?, ...)` would: decided, recorded (decision,
    /// `call` and completion records), metered and reviewed. For `lakegate product call`.
    pub async fn call_product(
        self: &Arc<Self>,
        who: &crate::Principal,
        name: &str,
        args: Vec<String>,
    ) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>, GatewayError> {
        use futures::StreamExt;
        if !lake_config::products::valid_name(name) {
            return Err(GatewayError::Config(format!(
                "`{name}` cannot name a data product"
            )));
        }
        let marks: Vec<String> = (1..=args.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT * FROM {name}({})", marks.join(", "));
        let query = self
            .prepare_audited(who, &sql, Some("lakegate product call".into()))
            .await?;
        // Text read as each parameter's type, as a client's typed value would arrive.
        let types = self
            .sessions
            .products()
            .get(name)
            .map(|p| p.types.clone())
            .unwrap_or_default();
        let mut values = Vec::with_capacity(args.len());
        for (i, a) in args.into_iter().enumerate() {
            let text = datafusion::common::ScalarValue::Utf8(Some(a));
            values.push(match types.get(i) {
                Some(t) => call::cast_argument(name, i, &format!("${}", i + 1), t, text)
                    .map_err(|e| GatewayError::Parameters(e.strip_backtrace()))?,
                None => text,
            });
        }
        let query = query.bind(values)?;
        let token = crate::QueryToken::new(self.clone(), query.clone(), std::time::Instant::now());
        let stream = match query.execute_with_plan().await {
            Ok((stream, plan)) => {
                token.executing(plan);
                stream
            }
            Err(e) => {
                token.end(crate::Outcome::Failed, e.record_text());
                token.finish().await;
                return Err(e);
            }
        };
        let mut reviewed = token.review(stream, None);
        let mut out = Vec::new();
        while let Some(batch) = reviewed.next().await {
            match batch {
                Ok(b) => out.push(b),
                Err(e) => {
                    drop(reviewed);
                    token.finish().await;
                    return Err(e);
                }
            }
        }
        drop(reviewed);
        let done = token.clone();
        token.completed();
        done.finish().await;
        Ok(out)
    }
}
