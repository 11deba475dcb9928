//! The write interactions inside a transaction: create (plain and conditional), update, patch and
//! delete, each checked against the caller's scopes and audited in the same transaction. A request
//! runs one of them in its own transaction; a transaction Bundle runs all its entries in one.

use std::collections::{HashSet, VecDeque};

use serde_json::Value;

use super::{
    admit, admit_current, audit_write, audit_write_with, body_type, check_if_match, ensure_type,
    ensure_writable, integrity, patch::Patch, read_version, rule, write_version, Engine, Stored,
    Written,
};
use crate::audit::{AuditSeed, Interaction};
use crate::auth::{Access, Perm, Rule};
use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::{self, ParseOptions};
use crate::store::{self, Backend, DbConn};

/// What every write of one request (or one Bundle) shares: the engine's settings, the caller and
/// the start of its AuditEvents.
pub(crate) struct Cx<'a> {
    pub engine: &'a Engine,
    pub access: &'a Access,
    pub seed: Option<&'a AuditSeed>,
}

impl Cx<'_> {
    fn base(&self) -> &str {
        &self.engine.base_url
    }

    /// The AuditEvent start for one interaction of this request.
    fn seed_for(&self, interaction: Interaction) -> Option<AuditSeed> {
        self.seed.map(|s| s.with_interaction(interaction))
    }

    /// create with the id `id` (assigned by the server). With `if_none_exist`, an existing match is
    /// returned instead (not created: 200), and several matches are a 412.
    pub fn create(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> FhirResult<Written> {
        self.check_create(ty, id, &resource)?;
        if let Some(cond) = if_none_exist {
            if let Some(existing) = self.existing_match(conn, ty, cond, "If-None-Exist")? {
                let seed = self.seed_for(Interaction::Create);
                audit_write(
                    conn,
                    seed.as_ref(),
                    self.base(),
                    200,
                    Some(&existing),
                    ty,
                    id,
                )?;
                return Ok(Written {
                    stored: existing,
                    created: false,
                });
            }
        }
        let s = write_version(conn, self.base(), None, ty, id, "POST", Some(resource))?;
        let derived = self.derive(conn, &s)?;
        let seed = self.seed_for(Interaction::Create);
        audit_write_with(
            conn,
            seed.as_ref(),
            self.base(),
            201,
            Some(&s),
            ty,
            id,
            &derived,
        )?;
        Ok(Written {
            stored: s,
            created: true,
        })
    }

    /// The checks of `create` (type, scopes, compartment), without writing.
    pub fn check_create(&self, ty: &str, id: &str, resource: &Value) -> FhirResult<()> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        let rule = rule(self.access, Perm::Create, ty)?;
        if body_type(resource) != ty {
            return Err(FhirError::invalid(
                format!("the body is a {}, the URL says {ty}", body_type(resource)),
                "resourceType",
            ));
        }
        admit(&rule, ty, id, resource, self.base(), "creating")
    }

    /// Stores new resources (each passed `check_create`) together: the rows `create` writes, in
    /// multi-row statements, and an AuditEvent for each.
    pub fn create_many(
        &self,
        conn: &mut DbConn,
        items: Vec<(String, String, Value)>,
    ) -> FhirResult<Vec<Stored>> {
        let prepared = items
            .into_iter()
            .map(|(ty, id, r)| super::Prepared::new(self.base(), &ty, &id, r))
            .collect::<FhirResult<Vec<_>>>()?;
        let stored = super::write_new_versions(conn, prepared)?;
        let derived = stored
            .iter()
            .map(|s| self.derive(conn, s))
            .collect::<FhirResult<Vec<_>>>()?;
        if let Some(seed) = self.seed_for(Interaction::Create) {
            let events = stored
                .iter()
                .zip(&derived)
                .map(|(s, d)| seed.event(201, super::entities_of(s, d, self.base())))
                .collect();
            crate::audit::record_in(conn, events).map_err(|e| {
                tracing::error!(error = %e, "the audit records of a transaction could not be stored");
                FhirError::Unavailable("the audit log is unavailable, so nothing was written".into())
            })?;
        }
        Ok(stored)
    }

    /// An AuditEvent of this request in the transaction.
    pub fn audit_event(
        &self,
        conn: &mut DbConn,
        interaction: Interaction,
        status: u16,
        entities: Vec<crate::audit::Entity>,
    ) -> FhirResult<()> {
        match self.seed_for(interaction) {
            Some(seed) => crate::audit::record_in(conn, vec![seed.event(status, entities)]),
            None => Ok(()),
        }
    }

    /// The AuditEvent of a conditional create that found its match (200, nothing written).
    pub fn note_existing(&self, conn: &mut DbConn, existing: &Stored) -> FhirResult<()> {
        let seed = self.seed_for(Interaction::Create);
        let (ty, id) = (&existing.resource_type, &existing.id);
        audit_write(
            conn,
            seed.as_ref(),
            self.base(),
            200,
            Some(existing),
            ty,
            id,
        )
    }

    /// The AuditEvent of a read inside a transaction.
    pub fn audit_access(
        &self,
        conn: &mut DbConn,
        interaction: Interaction,
        s: &Stored,
    ) -> FhirResult<()> {
        let seed = self.seed_for(interaction);
        audit_write(
            conn,
            seed.as_ref(),
            self.base(),
            200,
            Some(s),
            &s.resource_type,
            &s.id,
        )
    }

    /// The AuditEvent of a search inside a transaction (`query` relative to the base).
    pub fn audit_search(
        &self,
        conn: &mut DbConn,
        interaction: Interaction,
        query: &str,
        params: &[(String, String)],
    ) -> FhirResult<()> {
        let Some(seed) = self.seed_for(interaction) else {
            return Ok(());
        };
        let ty = query.split(['?', '/']).next().filter(|t| !t.is_empty());
        let entities = crate::audit::search_entities(query, params, ty);
        crate::audit::record_in(conn, vec![seed.event(200, entities)])
    }

    /// The one resource `cond` matches (None when none does; 412 when several do), with the
    /// condition locked for the rest of the transaction, so that two conditional creates of the
    /// same thing cannot both see nothing.
    pub fn existing_match(
        &self,
        conn: &mut DbConn,
        ty: &str,
        cond: &str,
        what: &str,
    ) -> FhirResult<Option<Stored>> {
        lock_condition(conn, self.engine.store.backend(), ty, cond)?;
        let ids = self.matches(conn, ty, cond, 2)?;
        match ids.as_slice() {
            [] => Ok(None),
            [id] => {
                let row = store::version(conn, ty, id, None)?
                    .ok_or_else(|| FhirError::Internal(format!("{ty}/{id} vanished")))?;
                Ok(Some(Stored::from_row(row)))
            }
            _ => Err(FhirError::PreconditionFailed(format!(
                "{what} '{cond}' matches more than one {ty}"
            ))),
        }
    }

    /// The ids of (at most `limit`) live resources of `ty` that the search `query` matches, among
    /// those the caller may search.
    pub fn matches(
        &self,
        conn: &mut DbConn,
        ty: &str,
        query: &str,
        limit: usize,
    ) -> FhirResult<Vec<String>> {
        ensure_type(ty)?;
        rule(self.access, Perm::Search, ty)?;
        // `Patient?identifier=…` and `?identifier=…` are common spellings of the condition.
        let query = query
            .strip_prefix(ty)
            .unwrap_or(query)
            .trim_start_matches('?');
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .filter(|(k, _)| !k.is_empty())
            .collect();
        if params.is_empty() {
            return Err(FhirError::BadRequest(format!(
                "the condition '{query}' has no search parameters"
            )));
        }
        // Result parameters (`_count`, `_format`, `_summary`, …) have no place in a condition.
        const FILTERS: &[&str] = &[
            "_id",
            "_lastUpdated",
            "_tag",
            "_profile",
            "_security",
            "_source",
            "_has",
            "_text",
            "_content",
            "_list",
        ];
        if let Some((k, _)) = params.iter().find(|(k, _)| {
            let name = k.split(':').next().unwrap_or_default();
            name.starts_with('_') && !FILTERS.contains(&name)
        }) {
            return Err(FhirError::BadRequest(format!(
                "'{k}' has no place in the condition '{query}'"
            )));
        }
        let limit = limit.max(1) as i64;
        params.push(("_count".into(), limit.to_string()));
        let opts = ParseOptions {
            default_count: limit,
            max_count: limit,
            strict: true,
            base_url: self.base(),
        };
        let mut q = search::parse(vec![ty.to_string()], &params, &opts)?;
        if q.conditions.is_empty() {
            return Err(FhirError::BadRequest(format!(
                "the condition '{query}' filters nothing: it would match every {ty}"
            )));
        }
        q.visible = self
            .access
            .visibility(Perm::Search, fhir::ENABLED_TYPES.iter().copied());
        let page = store::search::run(conn, self.engine.store.backend(), &q, None)?;
        Ok(page.matches.into_iter().map(|h| h.res_id).collect())
    }

    /// update (or update-as-create) of `ty/id`; with `if_match`, only of that version.
    pub fn update(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> FhirResult<Written> {
        self.update_as(conn, ty, id, resource, if_match, Interaction::Update)
    }

    fn update_as(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
        interaction: Interaction,
    ) -> FhirResult<Written> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        let rule = rule(self.access, Perm::Update, ty)?;
        check_update_body(ty, id, &resource)?;
        admit(&rule, ty, id, &resource, self.base(), "writing")?;
        let prev = store::current_for_update(conn, ty, id)?;
        admit_current(conn, &rule, prev.as_ref(), ty, id, self.base(), "updating")?;
        check_if_match(if_match, prev.as_ref(), ty, id)?;
        let created = prev.as_ref().is_none_or(|p| p.deleted != 0);
        let stored = write_version(
            conn,
            self.base(),
            prev.as_ref(),
            ty,
            id,
            "PUT",
            Some(resource),
        )?;
        let derived = self.derive(conn, &stored)?;
        let status = if created { 201 } else { 200 };
        let seed = self.seed_for(interaction);
        audit_write_with(
            conn,
            seed.as_ref(),
            self.base(),
            status,
            Some(&stored),
            ty,
            id,
            &derived,
        )?;
        Ok(Written { stored, created })
    }

    /// Conditional update (`PUT [type]?search`): the single match is updated; no match creates (with
    /// the body's id if it has one); several matches are a 412.
    pub fn conditional_update(
        &self,
        conn: &mut DbConn,
        ty: &str,
        cond: &str,
        mut resource: Value,
    ) -> FhirResult<Written> {
        let body_id = resource.get("id").and_then(Value::as_str);
        let id = self.conditional_update_id(conn, ty, cond, body_id)?;
        resource["id"] = Value::String(id.clone());
        self.update(conn, ty, &id, resource, None)
    }

    /// The id a conditional update writes: the one match's (the body may name it, or no id);
    /// with no match, the body's id (update as create) unless a resource that did not match holds
    /// it (409, as R5 says), else a new one.
    pub fn conditional_update_id(
        &self,
        conn: &mut DbConn,
        ty: &str,
        cond: &str,
        body_id: Option<&str>,
    ) -> FhirResult<String> {
        match self.existing_match(conn, ty, cond, "The conditional update")? {
            Some(found) => match body_id {
                Some(b) if b != found.id => Err(FhirError::invalid(
                    format!(
                        "the body's id '{b}' differs from the match {ty}/{}",
                        found.id
                    ),
                    format!("{ty}.id"),
                )),
                _ => Ok(found.id),
            },
            None => match body_id {
                Some(b) => {
                    if store::current(conn, ty, b)?.is_some_and(|c| c.deleted == 0) {
                        return Err(FhirError::Conflict(format!(
                            "{ty}/{b} exists but does not match '{cond}'; the conditional update \
                             will not overwrite it"
                        )));
                    }
                    Ok(b.to_string())
                }
                None => Ok(uuid::Uuid::now_v7().to_string()),
            },
        }
    }

    /// patch: `patch` applied to the current version; the result is validated like any update.
    pub fn patch(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        patch: &Patch,
        if_match: Option<i64>,
    ) -> FhirResult<Written> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        let rule = rule(self.access, Perm::Update, ty)?;
        if !fhir::valid_id(id) {
            return Err(FhirError::NotFound(format!("{ty}/{id} is not a valid id")));
        }
        // The row is locked first, so the version patched stays current until this commits; and
        // it must be the caller's to change before anything about it (its version, whether the
        // patch applies) is revealed.
        let prev = store::current_for_update(conn, ty, id)?;
        admit_current(conn, &rule, prev.as_ref(), ty, id, self.base(), "updating")?;
        let current = match store::version(conn, ty, id, None)? {
            None => return Err(FhirError::NotFound(format!("{ty}/{id} is not known"))),
            Some(r) if r.is_deleted() => {
                return Err(FhirError::Gone(format!("{ty}/{id} was deleted")))
            }
            Some(r) => r,
        };
        check_if_match(if_match, prev.as_ref(), ty, id)?;
        let before: Value = serde_json::from_str(&current.content)
            .map_err(|e| FhirError::Internal(format!("stored resource: {e}")))?;
        let after = patch.apply(before)?;
        if body_type(&after) != ty || after.get("id").and_then(Value::as_str) != Some(id) {
            return Err(FhirError::Unprocessable(format!(
                "a patch may not change the resource type or id of {ty}/{id}"
            )));
        }
        let after = fhir::check_resource(&after).map_err(|e| {
            FhirError::Unprocessable(format!("the patched {ty}/{id} is not valid: {e}"))
        })?;
        self.update_as(
            conn,
            ty,
            id,
            after,
            Some(current.version),
            Interaction::Patch,
        )
    }

    /// delete: a tombstone (None when there was nothing to delete). With referential integrity on,
    /// a resource others still reference is kept (409) unless `cascade` deletes them first.
    pub fn delete(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        if_match: Option<i64>,
        cascade: bool,
    ) -> FhirResult<Option<Written>> {
        ensure_type(ty)?;
        ensure_writable(ty)?;
        let rule = rule(self.access, Perm::Delete, ty)?;
        if !fhir::valid_id(id) {
            return Err(FhirError::NotFound(format!("{ty}/{id} is not a valid id")));
        }
        let prev = store::current_for_update(conn, ty, id)?;
        admit_current(conn, &rule, prev.as_ref(), ty, id, self.base(), "deleting")?;
        check_if_match(if_match, prev.as_ref(), ty, id)?;
        let written = match prev {
            Some(p) if p.deleted == 0 => {
                if cascade {
                    self.cascade(conn, ty, id)?;
                }
                let stored = write_version(conn, self.base(), Some(&p), ty, id, "DELETE", None)?;
                Some(Written {
                    stored,
                    created: false,
                })
            }
            _ => None,
        };
        let stored = written.as_ref().map(|w| &w.stored);
        let derived = match stored {
            Some(s) => self.derive(conn, s)?,
            None => Vec::new(),
        };
        let seed = self.seed_for(Interaction::Delete);
        audit_write_with(
            conn,
            seed.as_ref(),
            self.base(),
            204,
            stored,
            ty,
            id,
            &derived,
        )?;
        Ok(written)
    }

    /// Deletes everything that references `ty/id`, directly or through other referrers, breadth
    /// first; each a delete the caller's scopes must permit, each audited. Each resource is
    /// visited once, so reference cycles end.
    fn cascade(&self, conn: &mut DbConn, ty: &str, id: &str) -> FhirResult<()> {
        let mut seen: HashSet<(String, String)> = HashSet::from([(ty.to_string(), id.to_string())]);
        let mut queue = VecDeque::from([(ty.to_string(), id.to_string())]);
        while let Some((t, i)) = queue.pop_front() {
            loop {
                let fresh: Vec<(String, String)> = integrity::referrers(conn, &t, &i, 500)?
                    .into_iter()
                    .filter(|r| !seen.contains(r))
                    .collect();
                if fresh.is_empty() {
                    break;
                }
                for (rt, rid) in fresh {
                    seen.insert((rt.clone(), rid.clone()));
                    if seen.len() > MAX_CASCADE {
                        return Err(FhirError::Conflict(format!(
                            "_cascade=delete would delete more than {MAX_CASCADE} resources"
                        )));
                    }
                    if let Some(p) = store::current_for_update(conn, &rt, &rid)? {
                        if p.deleted == 0 {
                            // Refused without naming what the caller may not see.
                            let refused = |_| {
                                FhirError::Forbidden(
                                    "_cascade=delete would delete resources outside what the \
                                     access token may delete"
                                        .into(),
                                )
                            };
                            let rule = rule(self.access, Perm::Delete, &rt).map_err(refused)?;
                            admit_current(
                                conn,
                                &rule,
                                Some(&p),
                                &rt,
                                &rid,
                                self.base(),
                                "deleting",
                            )
                            .map_err(refused)?;
                            let s = write_version(
                                conn,
                                self.base(),
                                Some(&p),
                                &rt,
                                &rid,
                                "DELETE",
                                None,
                            )?;
                            let seed = self.seed_for(Interaction::Delete);
                            audit_write(
                                conn,
                                seed.as_ref(),
                                self.base(),
                                204,
                                Some(&s),
                                &rt,
                                &rid,
                            )?;
                        }
                    }
                    queue.push_back((rt, rid));
                }
            }
        }
        Ok(())
    }

    /// Conditional delete (`DELETE [type]?search`): every match, up to the configured cap (412 over
    /// it, and nothing deleted). Returns what was deleted.
    pub fn conditional_delete(
        &self,
        conn: &mut DbConn,
        ty: &str,
        cond: &str,
        cascade: bool,
    ) -> FhirResult<Vec<Written>> {
        let max = self.engine.limits.conditional_delete_max;
        let ids = self.matches(conn, ty, cond, max + 1)?;
        if ids.len() > max {
            return Err(FhirError::PreconditionFailed(format!(
                "the conditional delete '{cond}' matches more than {max} {ty} resources \
                 (CAIRN_CONDITIONAL_DELETE_MAX); nothing was deleted"
            )));
        }
        if ids.is_empty() {
            // Nothing to delete is still an interaction, and audited as one.
            let entities = vec![crate::audit::query_entity(&format!("{ty}?{cond}"))];
            self.audit_event(conn, Interaction::Delete, 204, entities)?;
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some(w) = self.delete(conn, ty, &id, None, cascade)? {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// Checks, once every write of the transaction is done, that what it wrote refers only to
    /// resources that exist, and that what it deleted is referenced by nothing live.
    pub fn check_integrity(&self, conn: &mut DbConn, written: &[&Stored]) -> FhirResult<()> {
        let named: Vec<(&Stored, String)> = written
            .iter()
            .map(|s| (*s, format!("{}/{}", s.resource_type, s.id)))
            .collect();
        self.check_integrity_named(conn, &named)
    }

    /// `check_integrity`, with the name each version's errors give it (a Bundle entry, say).
    pub fn check_integrity_named(
        &self,
        conn: &mut DbConn,
        written: &[(&Stored, String)],
    ) -> FhirResult<()> {
        if !self.engine.limits.referential_integrity {
            return Ok(());
        }
        let listable = |t: &str| self.access.rule(Perm::Read, t) == Rule::All;
        integrity::check(conn, self.base(), written, &listable)
    }

    /// Reads `ty/id` (version `v`) inside the transaction, as the caller may.
    pub fn read(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        v: Option<i64>,
    ) -> FhirResult<Stored> {
        ensure_type(ty)?;
        let rule = rule(self.access, Perm::Read, ty)?;
        if !fhir::valid_id(id) {
            return Err(FhirError::NotFound(format!("{ty}/{id} is not a valid id")));
        }
        if ty == "AuditEvent" {
            crate::audit::catch_up_in(conn, self.base())?;
        }
        let found = store::version(conn, ty, id, v)?;
        read_version(conn, &rule, self.base(), ty, id, v, found)
    }
}

/// The most resources one `_cascade=delete` removes.
const MAX_CASCADE: usize = 10_000;

/// The checks of an update's body against its URL: a valid id, the same type, the same id.
pub(crate) fn check_update_body(ty: &str, id: &str, resource: &Value) -> FhirResult<()> {
    if !fhir::valid_id(id) {
        return Err(FhirError::invalid(
            format!("'{id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"),
            "id",
        ));
    }
    if body_type(resource) != ty {
        return Err(FhirError::invalid(
            format!("the body is a {}, the URL says {ty}", body_type(resource)),
            "resourceType",
        ));
    }
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => Ok(()),
        Some(body_id) => Err(FhirError::invalid(
            format!("the body's id '{body_id}' differs from the URL's '{id}'"),
            format!("{ty}.id"),
        )),
        None => Err(FhirError::invalid(
            "an update must carry the resource id in the body",
            format!("{ty}.id"),
        )),
    }
}

/// Serializes conditional writes of the same condition until the transaction ends. SQLite's write
/// transaction already holds the whole database; PostgreSQL takes an advisory lock on the
/// condition's hash (the condition's parameters in a canonical order).
fn lock_condition(conn: &mut DbConn, backend: Backend, ty: &str, cond: &str) -> FhirResult<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(cond.as_bytes())
        .into_owned()
        .collect();
    pairs.sort();
    let key = format!("{ty}?{pairs:?}");
    let digest = <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    store::advisory_xact_lock(conn, i64::from_be_bytes(first))
}
