//! The FHIR RESTful interactions (http.html): create, read, vread, update, delete and history, generic
//! over resource type. Each interaction is one call into `store` (a write is one transaction);
//! nothing here knows HTTP, so `http` stays a thin translation of headers and status codes.

mod bundle;
mod capabilities;
mod care;
mod derive;
mod everything;
mod history;
mod integrity;
mod patch;
mod search;
mod write;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::audit::{AuditSeed, Interaction};
use crate::auth::{Access, Perm, Rule};
use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, format_instant};
use crate::store::{self, CurrentRow, NewVersion, Store, VersionRow};

pub use capabilities::capability_statement;
pub use history::HistoryLevel;
pub use patch::Patch;
pub use search::SearchScope;

use write::Cx;

/// How often a write without `If-Match` is retried after losing a race to another writer.
const WRITE_ATTEMPTS: usize = 5;

/// Settings the interactions need.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    /// The public FHIR base URL, without a trailing slash.
    pub base_url: String,
    pub default_count: i64,
    pub max_count: i64,
    pub limits: Limits,
}

/// Write rules and caps from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Refuse writes whose local references point nowhere, and deletes of what is referenced.
    pub referential_integrity: bool,
    /// How many resources one conditional delete may remove.
    pub conditional_delete_max: usize,
    /// How many entries a transaction or batch Bundle may hold.
    pub bundle_max_entries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            referential_integrity: true,
            conditional_delete_max: 10,
            bundle_max_entries: 5_000,
        }
    }
}

/// A stored version as the client sees it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    /// The resource as FHIR JSON text, exactly as stored (None for a deletion).
    pub content: Option<String>,
    /// The patients whose compartment holds it, when already known (a cached read's).
    pub patients: Option<std::sync::Arc<[String]>>,
}

/// The result of a write: what was stored, and whether it created the resource.
#[derive(Debug, Clone)]
pub struct Written {
    pub stored: Stored,
    pub created: bool,
}

impl Stored {
    fn from_row(row: VersionRow) -> Stored {
        let deleted = row.is_deleted();
        Stored {
            resource_type: row.res_type,
            id: row.res_id,
            version: row.version,
            last_updated: row.last_updated,
            content: (!deleted).then_some(row.content),
            patients: None,
        }
    }

    /// The stored resource as JSON (an empty object for a deletion).
    pub fn json(&self) -> FhirResult<Value> {
        serde_json::from_str(self.content.as_deref().unwrap_or("{}"))
            .map_err(|e| FhirError::Internal(format!("stored resource: {e}")))
    }

    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    pub fn location(&self, base: &str) -> String {
        format!(
            "{base}/{}/{}/_history/{}",
            self.resource_type, self.id, self.version
        )
    }
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// The rule of `access` for `perm` on `ty`, or 403 when the token's scopes give none.
pub fn rule(access: &Access, perm: Perm, ty: &str) -> FhirResult<Rule> {
    match access.rule(perm, ty) {
        Rule::Deny => Err(FhirError::Forbidden(format!(
            "the access token's scopes do not permit '{}' on {ty} (e.g. system/{ty}.{})",
            perm_name(perm),
            perm.name()
        ))),
        r => Ok(r),
    }
}

fn perm_name(p: Perm) -> &'static str {
    match p {
        Perm::Create => "create",
        Perm::Read => "read",
        Perm::Update => "update",
        Perm::Delete => "delete",
        Perm::Search => "search",
    }
}

/// 403 unless `rule` admits the resource `ty/id` with this content (as new content when `what` is
/// "creating" or "writing", which must not reach into another patient's compartment).
fn admit(
    rule: &Rule,
    ty: &str,
    id: &str,
    resource: &Value,
    base: &str,
    what: &str,
) -> FhirResult<()> {
    let ok = match what {
        "creating" | "writing" => rule.admits_write(ty, id, resource, base),
        _ => rule.admits(ty, id, resource, base),
    };
    if ok {
        Ok(())
    } else {
        Err(FhirError::Forbidden(format!(
            "{what} {ty}/{id} is outside what the access token may touch (its patient compartment or scope filter)"
        )))
    }
}

/// 405 for the types only the server writes (the audit trail).
fn ensure_writable(ty: &str) -> FhirResult<()> {
    if fhir::is_server_written(ty) {
        return Err(FhirError::MethodNotAllowed(format!(
            "{ty} is written by the server only: it can be read and searched, never changed"
        )));
    }
    Ok(())
}

/// The AuditEvent of a successful write, stored in the write's own transaction.
fn audit_write(
    conn: &mut store::DbConn,
    seed: Option<&AuditSeed>,
    base: &str,
    status: u16,
    stored: Option<&Stored>,
    ty: &str,
    id: &str,
) -> FhirResult<()> {
    audit_write_with(conn, seed, base, status, stored, ty, id, &[])
}

/// The entities of a write: the version written, its patients, and what the server derived from it.
fn entities_of(stored: &Stored, derived: &[Stored], base: &str) -> Vec<crate::audit::Entity> {
    let mut out = crate::audit::written_entities(stored, base);
    out.extend(derived.iter().map(|d| {
        crate::audit::resource_entity(&format!(
            "{}/{}/_history/{}",
            d.resource_type, d.id, d.version
        ))
    }));
    out
}

/// `audit_write` of a write that also wrote `derived` versions.
#[allow(clippy::too_many_arguments)]
fn audit_write_with(
    conn: &mut store::DbConn,
    seed: Option<&AuditSeed>,
    base: &str,
    status: u16,
    stored: Option<&Stored>,
    ty: &str,
    id: &str,
    derived: &[Stored],
) -> FhirResult<()> {
    let Some(seed) = seed else {
        return Ok(());
    };
    let entities = match stored {
        Some(s) => entities_of(s, derived, base),
        None => vec![crate::audit::resource_entity(&format!("{ty}/{id}"))],
    };
    crate::audit::record_in(conn, vec![seed.event(status, entities)]).map_err(|e| {
        tracing::error!(error = %e, "the audit record of a write could not be stored");
        FhirError::Unavailable("the audit log is unavailable, so nothing was written".into())
    })
}

/// Checks that the type is one the server serves.
pub fn ensure_type(resource_type: &str) -> FhirResult<()> {
    if fhir::is_enabled(resource_type) {
        Ok(())
    } else {
        Err(FhirError::NotFound(format!(
            "resource type '{resource_type}' is not supported by this server"
        )))
    }
}

/// Parses an `If-Match` / `ETag` value: `W/"3"`, `"3"` or `3`.
pub fn parse_etag(value: &str) -> FhirResult<i64> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    v.parse::<i64>()
        .map_err(|_| FhirError::BadRequest(format!("'{value}' is not a version ETag like W/\"3\"")))
}

/// Sets `id` and server-owned `meta` (versionId, lastUpdated), keeping the rest of `meta`, and puts
/// resourceType, id and meta first as FHIR JSON does.
pub(crate) fn stamp(
    resource: Value,
    id: &str,
    version: i64,
    last_updated: i64,
) -> FhirResult<String> {
    let Value::Object(mut obj) = resource else {
        return Err(FhirError::Internal("resource is not an object".into()));
    };
    let mut meta = Map::new();
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(format_instant(last_updated)),
    );
    if let Some(Value::Object(old)) = obj.remove("meta") {
        for (k, v) in old {
            if k != "versionId" && k != "lastUpdated" {
                meta.insert(k, v);
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        "resourceType".into(),
        obj.remove("resourceType").unwrap_or_default(),
    );
    out.insert("id".into(), Value::String(id.to_string()));
    out.insert("meta".into(), Value::Object(meta));
    obj.remove("id");
    out.extend(obj);
    serde_json::to_string(&Value::Object(out)).map_err(|e| FhirError::Internal(e.to_string()))
}

fn body_type(resource: &Value) -> &str {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Appends one version inside the caller's transaction, and rewrites the resource's search index
/// rows: the one write path every interaction uses.
pub(crate) fn write_version(
    conn: &mut store::DbConn,
    base_url: &str,
    prev: Option<&CurrentRow>,
    ty: &str,
    id: &str,
    method: &str,
    resource: Option<Value>,
) -> FhirResult<Stored> {
    let entries = resource
        .as_ref()
        .map(|r| crate::search::extract(r, base_url))
        .unwrap_or_default();
    let version = prev.map_or(1, |p| p.version + 1);
    let last_updated = prev.map_or(now_micros(), |p| now_micros().max(p.last_updated + 1));
    let content = match resource {
        Some(r) => stamp(r, id, version, last_updated)?,
        None => String::new(),
    };
    let new = NewVersion {
        res_type: ty.to_string(),
        res_id: id.to_string(),
        version,
        last_updated,
        method: method.to_string(),
        deleted: i16::from(content.is_empty()),
        content,
    };
    let rid = store::append(conn, prev, &new)?;
    store::search::replace_index(conn, rid, &entries, prev.is_none())?;
    Ok(Stored {
        resource_type: new.res_type,
        id: new.res_id,
        version,
        last_updated,
        content: (!new.content.is_empty()).then_some(new.content),
        patients: None,
    })
}

/// A brand-new resource ready to store: stamped content and index entries, computed outside the
/// transaction (a batch of AuditEvents is prepared by the requests, stored by one writer).
#[derive(Clone)]
pub struct Prepared {
    new: NewVersion,
    entries: Vec<crate::search::IndexEntry>,
}

impl Prepared {
    /// Version 1 of `ty/id`.
    pub fn new(base_url: &str, ty: &str, id: &str, resource: Value) -> FhirResult<Prepared> {
        let now = now_micros();
        let entries = crate::search::extract(&resource, base_url);
        Ok(Prepared {
            new: NewVersion {
                res_type: ty.to_string(),
                res_id: id.to_string(),
                version: 1,
                last_updated: now,
                method: "POST".into(),
                deleted: 0,
                content: stamp(resource, id, 1, now)?,
            },
            entries,
        })
    }

    /// Version 1 of `ty/id` as already stamped (`content`) at `last_updated`: an AuditEvent from
    /// the log, stored as it was hashed.
    pub fn logged(
        base_url: &str,
        ty: &str,
        id: String,
        last_updated: i64,
        content: String,
    ) -> FhirResult<Prepared> {
        let resource: Value = serde_json::from_str(&content)
            .map_err(|e| FhirError::Internal(format!("a logged {ty} is not JSON: {e}")))?;
        Ok(Prepared {
            entries: crate::search::extract(&resource, base_url),
            new: NewVersion {
                res_type: ty.to_string(),
                res_id: id,
                version: 1,
                last_updated,
                method: "POST".into(),
                deleted: 0,
                content,
            },
        })
    }
}

/// `write_version` for many prepared new resources of one type at once: the same rows, in a few
/// multi-row statements.
pub(crate) fn write_new_versions(
    conn: &mut store::DbConn,
    prepared: Vec<Prepared>,
) -> FhirResult<Vec<Stored>> {
    let (news, entries): (Vec<NewVersion>, Vec<_>) =
        prepared.into_iter().map(|p| (p.new, p.entries)).unzip();
    let rids = store::append_new_many(conn, &news)?;
    let rows: Vec<(i64, Vec<crate::search::IndexEntry>)> = rids.into_iter().zip(entries).collect();
    store::search::insert_index_many(conn, &rows)?;
    Ok(news
        .into_iter()
        .map(|n| Stored {
            resource_type: n.res_type,
            id: n.res_id,
            version: 1,
            last_updated: n.last_updated,
            content: Some(n.content),
            patients: None,
        })
        .collect())
}

impl Engine {
    /// create: a new resource with a server-assigned id; with `if_none_exist` (a search), the
    /// existing match instead when there is exactly one (412 when several).
    pub async fn create(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        ty: &str,
        resource: Value,
        if_none_exist: Option<String>,
    ) -> FhirResult<Written> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        rule(access, Perm::Create, ty)?;
        let id = uuid::Uuid::now_v7().to_string();
        let ty = ty.to_string();
        self.in_transaction(access, audit, move |cx, conn| {
            let w = cx.create(conn, &ty, &id, resource.clone(), if_none_exist.as_deref())?;
            if w.created {
                cx.check_integrity(conn, &[&w.stored])?;
            }
            Ok(w)
        })
        .await
    }

    /// Runs `f` as one write transaction with a write context for `access`; retried when it lost a
    /// race to another writer (it must be repeatable).
    async fn in_transaction<T, F>(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        f: F,
    ) -> FhirResult<T>
    where
        T: Send + 'static,
        F: Fn(&Cx, &mut store::DbConn) -> FhirResult<T> + Send + Sync + Clone + 'static,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (engine, access, seed, f) =
                (self.clone(), access.clone(), audit.cloned(), f.clone());
            let result = self
                .store
                .write(move |conn| {
                    let cx = Cx {
                        engine: &engine,
                        access: &access,
                        seed: seed.as_ref(),
                    };
                    f(&cx, conn)
                })
                .await;
            match result {
                Err(FhirError::WriteConflict) if attempt < WRITE_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    /// read: the current version; 404 if it never existed, 410 if it was deleted.
    pub async fn read(&self, access: &Access, ty: &str, id: &str) -> FhirResult<Stored> {
        self.vread_inner(access, ty, id, None).await
    }

    /// vread: one version by its versionId.
    pub async fn vread(
        &self,
        access: &Access,
        ty: &str,
        id: &str,
        version_id: &str,
    ) -> FhirResult<Stored> {
        let v = version_id
            .parse::<i64>()
            .map_err(|_| FhirError::NotFound(format!("{ty}/{id} has no version '{version_id}'")))?;
        self.vread_inner(access, ty, id, Some(v)).await
    }

    async fn vread_inner(
        &self,
        access: &Access,
        ty: &str,
        id: &str,
        v: Option<i64>,
    ) -> FhirResult<Stored> {
        ensure_type(ty)?;
        let rule = rule(access, Perm::Read, ty)?;
        if !fhir::valid_id(id) {
            return Err(FhirError::NotFound(format!("{ty}/{id} is not a valid id")));
        }
        if ty == "AuditEvent" {
            self.audit_current().await?;
        }
        // The current version from memory when it is cached: no database work, no thread hop.
        let cache = self.store.cache().filter(|_| v.is_none());
        if let Some(hit) = cache.and_then(|c| c.get(ty, id)) {
            admit_live(&rule, &self.base_url, &hit.row)?;
            let mut stored = Stored::from_row(hit.row.clone());
            stored.patients = Some(hit.patients.clone());
            return Ok(stored);
        }
        let ticket = cache.map(|c| c.ticket());
        let (t, i, base, store) = (
            ty.to_string(),
            id.to_string(),
            self.base_url.clone(),
            self.store.clone(),
        );
        self.store
            .read(move |conn| {
                let found = store::version(conn, &t, &i, v)?;
                let mut patients = None;
                if let (Some(ticket), Some(row), Some(cache)) = (ticket, &found, store.cache()) {
                    if cache.admits(row) {
                        // What the audit record of a read names, worked out once: for the cache
                        // and for this read's own record.
                        let known: std::sync::Arc<[String]> =
                            serde_json::from_str::<Value>(&row.content)
                                .map(|r| crate::search::patients_in(&r, &base))
                                .unwrap_or_default()
                                .into();
                        cache.remember(ticket, row, known.clone());
                        patients = Some(known);
                    }
                }
                let mut stored = read_version(conn, &rule, &base, &t, &i, v, found)?;
                stored.patients = patients;
                Ok(stored)
            })
            .await
    }

    /// Makes every AuditEvent logged so far readable and searchable (see `audit::catch_up`):
    /// called before any read that could see AuditEvents.
    pub(crate) async fn audit_current(&self) -> FhirResult<()> {
        crate::audit::catch_up(&self.store, &self.base_url).await
    }

    /// `$diff`: the JSON Patch (RFC 6902) that turns version `from` of `ty/id` into version `to`
    /// (by default the current one), both read as the caller may read them.
    pub async fn diff(
        &self,
        access: &Access,
        ty: &str,
        id: &str,
        from: &str,
        to: Option<&str>,
    ) -> FhirResult<(Stored, Stored, Value)> {
        let older = self.vread(access, ty, id, from).await?;
        let newer = match to {
            Some(v) => self.vread(access, ty, id, v).await?,
            None => self.read(access, ty, id).await?,
        };
        let patch = json_patch::diff(&older.json()?, &newer.json()?);
        let patch = serde_json::to_value(patch).map_err(|e| FhirError::Internal(e.to_string()))?;
        Ok((older, newer, patch))
    }

    /// update: a new version, or update-as-create with the client's id. With `if_match`, the write
    /// happens only if that is still the current version (412 otherwise).
    pub async fn update(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        ty: &str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> FhirResult<Written> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        let rule = rule(access, Perm::Update, ty)?;
        write::check_update_body(ty, id, &resource)?;
        admit(&rule, ty, id, &resource, &self.base_url, "writing")?;
        let (t, i) = (ty.to_string(), id.to_string());
        self.pinned(
            if_match,
            ty,
            id,
            self.in_transaction(access, audit, move |cx, conn| {
                let w = cx.update(conn, &t, &i, resource.clone(), if_match)?;
                cx.check_integrity(conn, &[&w.stored])?;
                Ok(w)
            }),
        )
        .await
    }

    /// Conditional update: `PUT [type]?search`.
    pub async fn conditional_update(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        ty: &str,
        cond: &str,
        resource: Value,
    ) -> FhirResult<Written> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        rule(access, Perm::Update, ty)?;
        if body_type(&resource) != ty {
            return Err(FhirError::invalid(
                format!("the body is a {}, the URL says {ty}", body_type(&resource)),
                "resourceType",
            ));
        }
        let (ty, cond) = (ty.to_string(), cond.to_string());
        self.in_transaction(access, audit, move |cx, conn| {
            let w = cx.conditional_update(conn, &ty, &cond, resource.clone())?;
            cx.check_integrity(conn, &[&w.stored])?;
            Ok(w)
        })
        .await
    }

    /// patch: JSON Patch or FHIRPath Patch on the current version.
    pub async fn patch(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        ty: &str,
        id: &str,
        patch: Patch,
        if_match: Option<i64>,
    ) -> FhirResult<Written> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        rule(access, Perm::Update, ty)?;
        let (t, i) = (ty.to_string(), id.to_string());
        self.pinned(
            if_match,
            ty,
            id,
            self.in_transaction(access, audit, move |cx, conn| {
                let w = cx.patch(conn, &t, &i, &patch, if_match)?;
                cx.check_integrity(conn, &[&w.stored])?;
                Ok(w)
            }),
        )
        .await
    }

    /// delete: a tombstone version. Deleting what does not exist (or is already deleted) is a no-op.
    /// With `cascade`, what references the resource is deleted first.
    pub async fn delete(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        ty: &str,
        id: &str,
        if_match: Option<i64>,
        cascade: bool,
    ) -> FhirResult<Option<Written>> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        rule(access, Perm::Delete, ty)?;
        if !fhir::valid_id(id) {
            return Err(FhirError::NotFound(format!("{ty}/{id} is not a valid id")));
        }
        let (t, i) = (ty.to_string(), id.to_string());
        self.pinned(
            if_match,
            ty,
            id,
            self.in_transaction(access, audit, move |cx, conn| {
                let w = cx.delete(conn, &t, &i, if_match, cascade)?;
                if let Some(w) = &w {
                    cx.check_integrity(conn, &[&w.stored])?;
                }
                Ok(w)
            }),
        )
        .await
    }

    /// Conditional delete: `DELETE [type]?search`; returns how many resources were deleted.
    pub async fn conditional_delete(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        ty: &str,
        cond: &str,
        cascade: bool,
    ) -> FhirResult<usize> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        rule(access, Perm::Delete, ty)?;
        let (ty, cond) = (ty.to_string(), cond.to_string());
        self.in_transaction(access, audit, move |cx, conn| {
            let gone = cx.conditional_delete(conn, &ty, &cond, cascade)?;
            let stored: Vec<&Stored> = gone.iter().map(|w| &w.stored).collect();
            cx.check_integrity(conn, &stored)?;
            Ok(gone.len())
        })
        .await
    }

    /// A write pinned with If-Match that lost a race: its version is stale, which is a 412.
    async fn pinned<T>(
        &self,
        if_match: Option<i64>,
        ty: &str,
        id: &str,
        write: impl std::future::Future<Output = FhirResult<T>>,
    ) -> FhirResult<T> {
        match (write.await, if_match) {
            (Err(FhirError::WriteConflict), Some(v)) => {
                Err(FhirError::PreconditionFailed(format!(
                    "{ty}/{id} was changed by another request; version {v} is no longer current"
                )))
            }
            (other, _) => other,
        }
    }

    /// Stores a batch of resources with client-chosen ids in one transaction (bulk loads: the
    /// benchmark's data set). Each is validated like any request body.
    pub async fn load_batch(&self, resources: Vec<Value>) -> FhirResult<usize> {
        let mut checked = Vec::with_capacity(resources.len());
        for r in resources {
            let body = serde_json::to_vec(&r).map_err(|e| FhirError::Internal(e.to_string()))?;
            let r = fhir::parse_resource(&body, fhir::Format::Json)?;
            let ty = body_type(&r).to_string();
            ensure_type(&ty)?;
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !fhir::valid_id(&id) {
                return Err(FhirError::invalid(
                    format!("'{id}' is not a valid id"),
                    "id",
                ));
            }
            checked.push((ty, id, r));
        }
        let base = self.base_url.clone();
        self.store
            .write(move |conn| {
                let n = checked.len();
                for (ty, id, r) in checked {
                    let prev = store::current_for_update(conn, &ty, &id)?;
                    write_version(conn, &base, prev.as_ref(), &ty, &id, "PUT", Some(r))?;
                }
                Ok(n)
            })
            .await
    }

    /// Rebuilds the search index of every live resource (after the definitions changed), a batch
    /// per transaction. Returns how many resources were indexed.
    /// Loads instruments (Questionnaires): each one not stored yet, by canonical url and version,
    /// is created (with its file's id when that is free) by the server, audited. Idempotent, and
    /// safe when several instances start at once. Returns `(url|version, id, created)` for each.
    pub fn load_instruments_now(
        &self,
        instruments: Vec<Value>,
    ) -> FhirResult<Vec<(String, String, bool)>> {
        let server = Access::server();
        let seed = AuditSeed::new(Interaction::Create, Some(&server), None, &self.base_url);
        let mut out = Vec::new();
        for q in instruments {
            let q = fhir::check_resource(&q)
                .map_err(|e| FhirError::Unprocessable(format!("instrument {}: {e}", q["url"])))?;
            let cond = crate::care::instruments::condition(&q)?;
            let name = format!(
                "{}|{}",
                q["url"].as_str().unwrap_or_default(),
                q["version"].as_str().unwrap_or_default()
            );
            let (id, created) = self.store.write_now(|conn| {
                let cx = Cx {
                    engine: self,
                    access: &server,
                    seed: Some(&seed),
                };
                if let Some(existing) =
                    cx.existing_match(conn, "Questionnaire", &cond, "instrument")?
                {
                    return Ok((existing.id, false));
                }
                let id = match q["id"].as_str() {
                    Some(id)
                        if fhir::valid_id(id)
                            && store::version(conn, "Questionnaire", id, None)?.is_none() =>
                    {
                        id.to_string()
                    }
                    _ => uuid::Uuid::now_v7().to_string(),
                };
                let w = cx.create(conn, "Questionnaire", &id, q.clone(), None)?;
                Ok((w.stored.id, true))
            })?;
            out.push((name, id, created));
        }
        Ok(out)
    }

    pub async fn reindex(&self) -> FhirResult<u64> {
        const BATCH: i64 = 500;
        // Logged AuditEvents without resource rows get them (indexed) first.
        self.audit_current().await?;
        let (mut after, mut done) = (0i64, 0u64);
        loop {
            let base = self.base_url.clone();
            let (last, n) = self
                .store
                .write(move |conn| {
                    let rows = store::search::live_after(conn, after, BATCH)?;
                    for row in &rows {
                        let resource: Value = serde_json::from_str(&row.content)
                            .map_err(|e| FhirError::Internal(format!("stored resource: {e}")))?;
                        let entries = crate::search::extract(&resource, &base);
                        store::search::replace_index(conn, row.rid, &entries, false)?;
                    }
                    Ok((rows.last().map(|r| r.rid), rows.len() as u64))
                })
                .await?;
            done += n;
            match last {
                Some(rid) => after = rid,
                None => {
                    self.store.analyze().await?;
                    return Ok(done);
                }
            }
        }
    }
}

/// A live version as `rule` lets the caller read it (403 when it may not).
fn admit_live(rule: &Rule, base: &str, row: &store::VersionRow) -> FhirResult<()> {
    if *rule != Rule::All {
        let resource: Value = serde_json::from_str(&row.content)
            .map_err(|e| FhirError::Internal(format!("stored resource: {e}")))?;
        admit(rule, &row.res_type, &row.res_id, &resource, base, "reading")?;
    }
    Ok(())
}

/// Version `v` of `ty/id` (the current one when None), `found` in the store, as `rule` lets the
/// caller read it: 404 if it never existed, 410 if it is a deletion (403 instead if the last live
/// version was not the caller's to see).
fn read_version(
    conn: &mut store::DbConn,
    rule: &Rule,
    base: &str,
    ty: &str,
    id: &str,
    v: Option<i64>,
    found: Option<store::VersionRow>,
) -> FhirResult<Stored> {
    let what = match v {
        Some(v) => format!("{ty}/{id}/_history/{v}"),
        None => format!("{ty}/{id}"),
    };
    match found {
        None => Err(FhirError::NotFound(format!("{what} is not known"))),
        Some(r) if r.is_deleted() => {
            if *rule != Rule::All {
                // Whether it was the caller's to see is judged by its last live version.
                let last = store::version(conn, ty, id, Some(r.version - 1))?;
                let seen = last.and_then(|l| serde_json::from_str::<Value>(&l.content).ok());
                if !seen.is_some_and(|x| rule.admits(ty, id, &x, base)) {
                    return Err(FhirError::Forbidden(format!(
                        "{what} is outside what the access token may read"
                    )));
                }
            }
            Err(FhirError::Gone(format!("{what} was deleted")))
        }
        Some(r) => {
            admit_live(rule, base, &r)?;
            Ok(Stored::from_row(r))
        }
    }
}

/// Inside a write: 403 unless `rule` would admit writing the live current version (so a patient
/// token cannot change or remove what also belongs to another patient). Nothing to check when the
/// resource does not exist or is deleted.
fn admit_current(
    conn: &mut store::DbConn,
    rule: &Rule,
    prev: Option<&CurrentRow>,
    ty: &str,
    id: &str,
    base: &str,
    what: &str,
) -> FhirResult<()> {
    if *rule == Rule::All || prev.is_none_or(|p| p.deleted != 0) {
        return Ok(());
    }
    let Some(row) = store::version(conn, ty, id, None)? else {
        return Ok(());
    };
    let resource: Value = serde_json::from_str(&row.content)
        .map_err(|e| FhirError::Internal(format!("stored resource: {e}")))?;
    if rule.admits_write(ty, id, &resource, base) {
        Ok(())
    } else {
        Err(FhirError::Forbidden(format!(
            "{what} {ty}/{id} is outside what the access token may touch (its patient compartment or scope filter)"
        )))
    }
}

fn check_if_match(
    if_match: Option<i64>,
    prev: Option<&CurrentRow>,
    ty: &str,
    id: &str,
) -> FhirResult<()> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    match prev {
        Some(p) if p.deleted == 0 && p.version == expected => Ok(()),
        Some(p) if p.deleted == 0 => Err(FhirError::PreconditionFailed(format!(
            "If-Match asks for version {expected} of {ty}/{id}, but the current version is {}",
            p.version
        ))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "If-Match asks for version {expected} of {ty}/{id}, which does not exist"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stamping_puts_server_meta_first_and_keeps_client_meta() {
        let r = json!({"name": [{"family": "X"}], "resourceType": "Patient", "id": "old",
            "meta": {"versionId": "9", "tag": [{"code": "t"}]}});
        let s: Value = serde_json::from_str(&stamp(r, "p1", 3, 0).unwrap()).unwrap();
        let keys: Vec<_> = s.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "name"]);
        assert_eq!(s["meta"]["versionId"], "3");
        assert_eq!(s["meta"]["lastUpdated"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(s["meta"]["tag"][0]["code"], "t");
    }

    #[test]
    fn etags_parse_in_every_common_spelling() {
        assert_eq!(parse_etag("W/\"3\"").unwrap(), 3);
        assert_eq!(parse_etag("\"4\"").unwrap(), 4);
        assert_eq!(parse_etag("5").unwrap(), 5);
        assert!(parse_etag("W/\"x\"").is_err());
    }
}
