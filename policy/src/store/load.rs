//! Loading a policy folder: reading and validating the files, the generated schema and the lake's entities.

use super::*;

/// The minimum group size of an `aggregate` permit without `@min_group`.
pub const DEFAULT_MIN_GROUP: u64 = 10;

/// The file of the policy folder that holds entities.
pub const ENTITIES_FILE: &str = "entities.json";

/// A file of the policy folder with its text, for locating errors.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) text: String,
}

impl Source {
    pub(super) fn read(path: PathBuf) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Source { path, text })
    }

    /// `file:line:column` of a byte offset.
    pub(super) fn locate(&self, offset: Option<usize>) -> String {
        let file = self.path.display();
        match offset {
            Some(off) if off <= self.text.len() => {
                let before = &self.text[..off];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("{file}:{line}:{col}")
            }
            _ => file.to_string(),
        }
    }

    /// An error for a diagnostic raised on this file.
    pub(super) fn error(&self, d: &dyn Diagnostic, prefix: &str) -> PolicyError {
        let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
        PolicyError::Invalid {
            location: self.locate(offset),
            message: format!("{prefix}{}", describe(d)),
        }
    }
}

/// A diagnostic's message with its help, on one line.
pub(super) fn describe(d: &dyn Diagnostic) -> String {
    let mut s = d.to_string();
    let mut src = std::error::Error::source(d);
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    if let Some(help) = d.help() {
        s.push_str(&format!(" (help: {help})"));
    }
    s
}

pub(super) fn files_with_ext(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A policy id as written in its `@id` (`PolicyId`'s `Display` escapes quotes and backslashes,
/// and the `@mask`/`@min_group` maps are keyed by the id as written).
pub(super) fn id_text(id: &PolicyId) -> String {
    AsRef::<str>::as_ref(id).to_string()
}

/// `Type::"id"` with any id text (built, not parsed: no escaping to get wrong).
pub(super) fn entity_uid(ty: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let ty = EntityTypeName::from_str(ty)
        .map_err(|e| PolicyError::Request(format!("`{id}` as {ty}: {}", describe(&e))))?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// The lake's own entities: departments, tables and columns.
pub(super) fn lake_entities(lake: &LakeDescription) -> Result<Vec<Entity>, PolicyError> {
    let bad = |e: &dyn Diagnostic| PolicyError::Request(describe(e));
    let mut out = Vec::new();
    let mut departments = HashSet::new();
    for t in &lake.tables {
        let dept = entity_uid("Lake::Department", &t.schema)?;
        if departments.insert(t.schema.clone()) {
            out.push(Entity::new_no_attrs(dept.clone(), HashSet::new()));
        }
        let table = entity_uid("Lake::Table", &t.id())?;
        let mut attrs = HashMap::from([(
            "department".to_string(),
            RestrictedExpression::new_entity_uid(dept.clone()),
        )]);
        if let Some(k) = &t.subject_key {
            attrs.insert(
                "subject_key".into(),
                RestrictedExpression::new_string(k.clone()),
            );
        }
        out.push(Entity::new(table.clone(), attrs, HashSet::from([dept])).map_err(|e| bad(&e))?);
        for c in &t.columns {
            let uid = entity_uid("Lake::Column", &format!("{}.{}", t.id(), c.name))?;
            let attrs = HashMap::from([
                (
                    "table".to_string(),
                    RestrictedExpression::new_entity_uid(table.clone()),
                ),
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(c.name.clone()),
                ),
                (
                    "data_type".to_string(),
                    RestrictedExpression::new_string(c.data_type.clone()),
                ),
            ]);
            out.push(Entity::new(uid, attrs, HashSet::from([table.clone()])).map_err(|e| bad(&e))?);
        }
    }
    for p in &lake.products {
        out.push(Entity::new_no_attrs(
            entity_uid("Lake::Product", p)?,
            HashSet::new(),
        ));
    }
    Ok(out)
}

/// The admin's policies as read: the Cedar set and what each policy's annotations say.
struct ReadPolicies {
    policies: cedar_policy::PolicySet,
    /// Which source each policy came from (an index into `sources`).
    origin: HashMap<PolicyId, usize>,
    sources: Vec<Source>,
    masks: HashMap<String, Mask>,
    min_groups: HashMap<String, u64>,
    privacy: HashMap<String, crate::Privacy>,
    samples: HashMap<String, u16>,
}

/// The schema generated from `lake` composed with the admin's `*.cedarschema` fragments, and
/// its text (hashed into the set's hash by the caller).
fn read_schema(
    dir: &Path,
    lake: &LakeDescription,
    hasher: &mut Sha256,
) -> Result<(Schema, String), PolicyError> {
    let generated = generate_schema(lake);
    let (gen_fragment, _) =
        SchemaFragment::from_cedarschema_str(&generated).map_err(|e| PolicyError::Invalid {
            location: "<generated lake schema>".into(),
            message: format!(
                "{}; a table or column name cannot be expressed in Cedar",
                describe(&e)
            ),
        })?;
    let mut fragments = vec![gen_fragment];
    let mut schema_text = generated;
    let schema_files = files_with_ext(dir, "cedarschema")?;
    if schema_files.is_empty() {
        return Err(PolicyError::Invalid {
            location: dir.display().to_string(),
            message: "no *.cedarschema file: declare at least Lake::User and Lake::Scenario".into(),
        });
    }
    for path in schema_files {
        let src = Source::read(path)?;
        hasher.update(src.text.as_bytes());
        let (fragment, _) =
            SchemaFragment::from_cedarschema_str(&src.text).map_err(|e| src.error(&e, ""))?;
        fragments.push(fragment);
        schema_text.push_str(&format!("\n// From {}\n", src.path.display()));
        schema_text.push_str(&src.text);
    }
    let schema = Schema::from_schema_fragments(fragments).map_err(|e| PolicyError::Invalid {
        location: dir.display().to_string(),
        message: format!("the composed schema is invalid: {}", describe(&e)),
    })?;
    Ok((schema, schema_text))
}

/// Every `*.cedar` file of `dir`: ids are the @id annotations, else file#n.
fn read_policies(dir: &Path, hasher: &mut Sha256) -> Result<ReadPolicies, PolicyError> {
    let mut read = ReadPolicies {
        policies: cedar_policy::PolicySet::new(),
        origin: HashMap::new(),
        sources: Vec::new(),
        masks: HashMap::new(),
        min_groups: HashMap::new(),
        privacy: HashMap::new(),
        samples: HashMap::new(),
    };
    for path in files_with_ext(dir, "cedar")? {
        let src = Source::read(path)?;
        hasher.update(src.text.as_bytes());
        let parsed = cedar_policy::PolicySet::from_str(&src.text).map_err(|e| src.error(&e, ""))?;
        if let Some(t) = parsed.templates().next() {
            return Err(PolicyError::Invalid {
                location: src.locate(None),
                message: format!(
                    "template {} is not supported: write a policy without ?principal/?resource slots",
                    t.id()
                ),
            });
        }
        let file_name = src
            .path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for (n, p) in parsed.policies().enumerate() {
            let id = p
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{file_name}#{n}"));
            let pid = PolicyId::new(&id);
            if read.origin.contains_key(&pid) {
                return Err(PolicyError::Invalid {
                    location: src.locate(None),
                    message: format!(
                        "policy id `{id}` is used twice: give each policy its own @id"
                    ),
                });
            }
            read.annotations(p, &id, &src)?;
            read.policies
                .add(p.new_id(pid.clone()))
                .map_err(|e| PolicyError::Invalid {
                    location: src.locate(None),
                    message: describe(&e),
                })?;
            read.origin.insert(pid, read.sources.len());
        }
        read.sources.push(src);
    }
    Ok(read)
}

impl ReadPolicies {
    /// Reads policy `id`'s annotations (@mask, @epsilon, @bounds, @min_group, @sample), refusing those
    /// that do not belong on it.
    fn annotations(
        &mut self,
        p: &cedar_policy::Policy,
        id: &str,
        src: &Source,
    ) -> Result<(), PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            location: src.locate(None),
            message: format!("policy `{id}`: {message}"),
        };
        if let Some(m) = p.annotation("mask") {
            let mask = m
                .parse::<Mask>()
                .map_err(|e| invalid(format!("@mask(\"{m}\"): {e}")))?;
            self.masks.insert(id.to_string(), mask);
        }
        let names = |action: &str| match p.action_constraint() {
            cedar_policy::ActionConstraint::Eq(a) => a.id().unescaped() == action,
            cedar_policy::ActionConstraint::In(a) => a.iter().any(|a| a.id().unescaped() == action),
            cedar_policy::ActionConstraint::Any => false,
        };
        let permit = p.effect() == cedar_policy::Effect::Permit;
        if names("read_masked") && permit && p.annotation("mask").is_none() {
            return Err(PolicyError::Invalid {
                location: src.locate(None),
                message: format!(
                    "policy `{id}` permits read_masked but names no mask: add e.g. @mask(\"hash\")"
                ),
            });
        }
        // Noise is asked of `aggregate` permits only; anything else is a mistake, and refusing
        // it fails closed.
        let epsilon = p.annotation("epsilon");
        let bounds = p.annotation("bounds");
        if epsilon.is_some() || bounds.is_some() {
            if !names("aggregate") || !permit {
                return Err(invalid(
                    "@epsilon and @bounds belong on permits of the aggregate action".into(),
                ));
            }
            let Some(e) = epsilon else {
                return Err(invalid(
                    "@bounds needs @epsilon: bounds clamp sums released with differential privacy"
                        .into(),
                ));
            };
            let epsilon = crate::Epsilon::parse(e)
                .map_err(|why| invalid(format!("@epsilon(\"{e}\"): {why}")))?;
            let bounds = bounds
                .map(|b| {
                    crate::Bounds::parse(b)
                        .map_err(|why| invalid(format!("@bounds(\"{b}\"): {why}")))
                })
                .transpose()?;
            self.privacy
                .insert(id.to_string(), crate::Privacy { epsilon, bounds });
        }
        if let Some(n) = p.annotation("sample") {
            // Only a permit's rows can be sampled; on anything else the annotation would
            // silently do nothing, so it is refused.
            if !names("read_row") || !permit {
                return Err(invalid(
                    "@sample belongs on permits of the read_row action (`policy-model.md` §8)"
                        .into(),
                ));
            }
            let bp = crate::predicate::parse_sample(n).map_err(invalid)?;
            self.samples.insert(id.to_string(), bp);
        }
        if let Some(k) = p.annotation("min_group") {
            let k = k.parse::<u64>().ok().filter(|k| *k > 0).ok_or_else(|| {
                invalid(format!(
                    "@min_group(\"{k}\") must be a positive whole number, e.g. @min_group(\"10\")"
                ))
            })?;
            self.min_groups.insert(id.to_string(), k);
        }
        Ok(())
    }

    /// Strict validation against `schema`; every error names its file and line.
    fn validate(&self, dir: &Path, schema: &Schema) -> Result<(), PolicyError> {
        let result =
            Validator::new(schema.clone()).validate(&self.policies, ValidationMode::Strict);
        if result.validation_passed() {
            return Ok(());
        }
        let errors: Vec<PolicyError> = result
            .validation_errors()
            .map(|e| {
                let prefix = format!("policy `{}`: ", e.policy_id());
                match self.origin.get(e.policy_id()) {
                    Some(&i) => self.sources[i].error(e, &prefix),
                    None => PolicyError::Invalid {
                        location: dir.display().to_string(),
                        message: format!("{prefix}{}", describe(e)),
                    },
                }
            })
            .collect();
        Err(if errors.len() == 1 {
            errors.into_iter().next().expect("one error")
        } else {
            PolicyError::Many(errors)
        })
    }
}

/// The admin's `entities.json`, validated against `schema`, plus the lake's own entities.
fn read_entities(
    dir: &Path,
    lake: &LakeDescription,
    schema: &Schema,
    hasher: &mut Sha256,
) -> Result<(Source, Entities), PolicyError> {
    let src = Source::read(dir.join(ENTITIES_FILE))?;
    hasher.update(src.text.as_bytes());
    let admin_entities =
        Entities::from_json_str(&src.text, Some(schema)).map_err(|e| src.error(&e, ""))?;
    let entities = admin_entities
        .add_entities(lake_entities(lake)?, Some(schema))
        .map_err(|e| PolicyError::Invalid {
            location: src.locate(None),
            message: format!(
                "{}; entities.json must not declare the lake's own Department, Table or Column entities",
                describe(&e)
            ),
        })?;
    Ok((src, entities))
}

impl PolicySet {
    /// Loads `dir` (`*.cedarschema`, `*.cedar`, `entities.json`), composes its schema with the
    /// one generated from `lake`, and validates everything strictly.
    pub fn load(dir: &Path, lake: &LakeDescription) -> Result<Self, PolicyError> {
        let mut hasher = Sha256::new();
        let (schema, schema_text) = read_schema(dir, lake, &mut hasher)?;
        let read = read_policies(dir, &mut hasher)?;
        read.validate(dir, &schema)?;
        let (entities_src, entities) = read_entities(dir, lake, &schema, &mut hasher)?;
        hasher.update(schema_text.as_bytes());
        let partial_entities =
            PartialEntities::from_concrete(entities.clone(), &schema).map_err(|e| {
                PolicyError::Invalid {
                    location: entities_src.locate(None),
                    message: describe(&e),
                }
            })?;

        let reach = Reaches::new(&read.policies);
        let actions = PerAction::new(|a| {
            let uid = slice::action_uid(a);
            let ancestors = entities.ancestors(&uid).map(|i| i.cloned().collect());
            (uid, ancestors)
        });

        let warnings = lint::warnings(&lint::Loaded {
            policies: &read.policies,
            origin: &read.origin,
            sources: &read.sources,
            entities: &entities_src,
            masks: &read.masks,
            lake,
            schema: &schema,
            partial_entities: &partial_entities,
            read_masked: &actions[Action::ReadMasked].0,
            samples: &read.samples,
            read_row: &actions[Action::ReadRow].0,
        });
        for w in &warnings {
            tracing::warn!("policy: {w}");
        }

        Ok(PolicySet {
            warnings,
            schema,
            schema_text,
            policies: read.policies,
            entities,
            partial_entities,
            masks: read.masks,
            min_groups: read.min_groups,
            privacy: read.privacy,
            samples: read.samples,
            hash: hex::encode(hasher.finalize()),
            authorizer: Authorizer::new(),
            grants: lru_cache(GRANT_CACHE_ENTRIES),
            reach,
            actions,
            column_type: EntityTypeName::from_str("Lake::Column").expect("a valid type name"),
            slices: lru_cache(SLICE_CACHE_ENTRIES),
            action_sets: lru_cache(ACTION_SET_ENTRIES),
            contexts: lru_cache(CONTEXT_ENTRIES),
            now: std::sync::Mutex::new(None),
            memo_budget: Budget::default(),
            tables: lake.tables.iter().map(|t| (t.id(), t.clone())).collect(),
            products: lake.products.clone(),
        })
    }
}
