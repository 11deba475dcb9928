//! `POST [base]` with a transaction or batch Bundle (http.html#transaction).
//!
//! A transaction runs every entry in one database transaction, in the spec's order (DELETE, POST,
//! PUT and PATCH, then GET): the ids of new resources are chosen first, so `urn:uuid:` and
//! `urn:oid:` fullUrls (and conditional references, `Patient?identifier=…`) are rewritten wherever
//! they appear before anything is stored. Any failing entry fails the whole Bundle, named in the
//! OperationOutcome. A batch runs each entry as its own transaction and reports each outcome.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{now_micros, write::Cx, Engine, Patch, SearchScope, Stored};
use crate::audit::{AuditSeed, Interaction};
use crate::auth::{Access, Perm};
use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, format_instant};
use crate::store::DbConn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One entry's request, checked.
#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    method: Method,
    /// The request URL relative to the base: `Type`, `Type/id`, `Type?search`, ...
    url: String,
    full_url: Option<String>,
    resource: Option<Value>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
}

impl Entry {
    /// The error, named after this entry.
    fn fail(&self, e: FhirError) -> FhirError {
        e.within(
            &format!(
                "Bundle.entry[{}] ({} {})",
                self.index,
                self.method.name(),
                self.url
            ),
            Some(&format!("Bundle.entry[{}].resource", self.index)),
        )
    }

    /// `(path, query)` of the URL.
    fn parts(&self) -> (&str, Option<&str>) {
        match self.url.split_once('?') {
            Some((p, q)) => (p.trim_end_matches('/'), Some(q)),
            None => (self.url.trim_end_matches('/'), None),
        }
    }

    fn segments(&self) -> Vec<&str> {
        self.parts()
            .0
            .split('/')
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// What an entry did.
#[derive(Debug, Clone)]
enum Done {
    /// Created (201) or updated/patched (200), or an existing match of a conditional create (200).
    Written { stored: Stored, status: u16 },
    /// Deleted (or nothing to delete).
    Deleted,
    /// A read or a search: the resource or the searchset.
    Got(Value, Option<Stored>),
}

/// Where an entry's resource will live, chosen before anything is written.
#[derive(Debug, Clone)]
struct Slot {
    ty: String,
    id: String,
    /// The match of a conditional create: nothing is written for the entry.
    existing: Option<Stored>,
}

impl Engine {
    /// Runs a transaction or batch Bundle; returns the response Bundle.
    pub async fn process_bundle(
        &self,
        access: &Access,
        audit: Option<&AuditSeed>,
        body: Value,
    ) -> FhirResult<Value> {
        if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(FhirError::invalid(
                "POST to the base takes a Bundle of type transaction or batch",
                "resourceType",
            ));
        }
        let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
        let raw = match body.get("entry") {
            None => vec![],
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return Err(FhirError::invalid("must be a list", "Bundle.entry")),
        };
        let max = self.limits.bundle_max_entries;
        if raw.len() > max {
            return Err(FhirError::PayloadTooLarge(format!(
                "the Bundle has {} entries; this server takes at most {max} per Bundle \
                 (CAIRN_BUNDLE_MAX_ENTRIES)",
                raw.len()
            )));
        }
        match kind {
            "transaction" => {
                let entries = raw
                    .iter()
                    .enumerate()
                    .map(|(i, e)| self.entry(i, e))
                    .collect::<FhirResult<Vec<_>>>()?;
                let entries = Arc::new(entries);
                let n = entries.len();
                let done = self
                    .in_transaction(access, audit, move |cx, conn| {
                        let done = transaction(cx, conn, &entries)?;
                        // The Bundle's own AuditEvent commits with it: an answer that the
                        // transaction is stored is never lost to a later audit failure.
                        cx.audit_event(conn, Interaction::Transaction, 200, vec![])?;
                        Ok(done)
                    })
                    .await?;
                Ok(self.response("transaction-response", n, done))
            }
            "batch" => {
                let mut out = Vec::with_capacity(raw.len());
                for (i, e) in raw.iter().enumerate() {
                    let result = match self.entry(i, e) {
                        Ok(entry) => {
                            let entries = Arc::new(vec![entry]);
                            self.in_transaction(access, audit, move |cx, conn| {
                                transaction(cx, conn, &entries)
                            })
                            .await
                            .map(|mut d| d.remove(0).1)
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(err) = &result {
                        // The entry's own AuditEvent went with its rolled-back transaction.
                        self.audit_failed_entry(audit, e, err.status()).await?;
                    }
                    out.push((i, result));
                }
                Ok(self.batch_response(out))
            }
            other => Err(FhirError::invalid(
                format!(
                    "a Bundle POSTed to the base must be a transaction or a batch, not '{other}'"
                ),
                "Bundle.type",
            )),
        }
    }

    /// The AuditEvent of a batch entry that failed: the interaction and resource its request names,
    /// and its status, stored on its own.
    async fn audit_failed_entry(
        &self,
        audit: Option<&AuditSeed>,
        raw: &Value,
        status: u16,
    ) -> FhirResult<()> {
        let Some(seed) = audit else { return Ok(()) };
        let request = &raw["request"];
        let method = request["method"].as_str().unwrap_or_default();
        let url = request["url"].as_str().unwrap_or_default();
        let url = url.strip_prefix(&self.base_url).unwrap_or(url);
        let path = url
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_start_matches('/');
        let (interaction, target) = crate::audit::infer(method, &format!("/fhir/{path}"));
        let entities = match target {
            Some(t) => vec![crate::audit::resource_entity(&t)],
            None if !url.is_empty() && url.len() <= 2000 => {
                vec![crate::audit::query_entity(url.trim_start_matches('/'))]
            }
            None => vec![],
        };
        let event = seed.with_interaction(interaction).event(status, entities);
        self.store
            .write(move |conn| crate::audit::record_in(conn, vec![event]))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "the audit record of a failed batch entry could not be stored");
                FhirError::Unavailable("the audit log is unavailable".into())
            })
    }

    /// Checks one raw entry: its request, and its resource as strictly as a request body.
    fn entry(&self, index: usize, e: &Value) -> FhirResult<Entry> {
        let at = |field: &str| format!("Bundle.entry[{index}].{field}");
        let request = e
            .get("request")
            .ok_or_else(|| FhirError::invalid("an entry needs a request", at("request")))?;
        let method = match request.get("method").and_then(Value::as_str) {
            Some("GET") | Some("HEAD") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some("DELETE") => Method::Delete,
            other => {
                return Err(FhirError::invalid(
                    format!("'{}' is not a method an entry may use", other.unwrap_or("")),
                    at("request.method"),
                ))
            }
        };
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| FhirError::invalid("an entry needs a request URL", at("request.url")))?;
        let url = url
            .strip_prefix(&self.base_url)
            .unwrap_or(url)
            .trim_start_matches('/')
            .to_string();
        let text = |name: &str| {
            request
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let if_match = text("ifMatch")
            .map(|v| super::parse_etag(&v))
            .transpose()
            .map_err(|e| e.within(&at("request.ifMatch"), None))?;
        let mut entry = Entry {
            index,
            method,
            url,
            full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
            resource: None,
            if_match,
            if_none_exist: text("ifNoneExist"),
        };
        let resource = e.get("resource");
        match (method, resource) {
            (Method::Post | Method::Put | Method::Patch, None) => {
                return Err(entry.fail(FhirError::invalid(
                    "this entry needs a resource",
                    at("resource"),
                )))
            }
            (_, Some(r)) if matches!(method, Method::Post | Method::Put | Method::Patch) => {
                // Checked as it will be stored; references are rewritten later, which keeps the
                // resource valid (a reference stays a reference).
                let checked = fhir::check_resource(r).map_err(|e| entry.fail(e))?;
                entry.resource = Some(checked);
            }
            _ => {}
        }
        Ok(entry)
    }

    fn response(&self, kind: &str, n: usize, mut done: Vec<(usize, Done)>) -> Value {
        done.sort_by_key(|(i, _)| *i);
        debug_assert_eq!(done.len(), n);
        let entries: Vec<Value> = done
            .into_iter()
            .map(|(_, d)| self.entry_response(d))
            .collect();
        json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::now_v7().to_string(),
            "meta": {"lastUpdated": format_instant(now_micros())},
            "type": kind,
            "entry": entries,
        })
    }

    fn batch_response(&self, out: Vec<(usize, FhirResult<Done>)>) -> Value {
        let entries: Vec<Value> = out
            .into_iter()
            .map(|(_, r)| match r {
                Ok(d) => self.entry_response(d),
                Err(e) => {
                    if let FhirError::Internal(detail) = &e {
                        tracing::error!(%detail, "internal error in a batch entry");
                    }
                    json!({"response": {
                        "status": status_line(e.status()),
                        "outcome": e.operation_outcome(),
                    }})
                }
            })
            .collect();
        json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::now_v7().to_string(),
            "meta": {"lastUpdated": format_instant(now_micros())},
            "type": "batch-response",
            "entry": entries,
        })
    }

    fn entry_response(&self, d: Done) -> Value {
        let versioned = |s: &Stored, status: u16| {
            json!({
                "fullUrl": format!("{}/{}/{}", self.base_url, s.resource_type, s.id),
                "response": {
                    "status": status_line(status),
                    "location": format!("{}/{}/_history/{}", s.resource_type, s.id, s.version),
                    "etag": s.etag(),
                    "lastModified": format_instant(s.last_updated),
                }
            })
        };
        match d {
            Done::Written { stored, status } => versioned(&stored, status),
            Done::Deleted => json!({"response": {"status": status_line(204)}}),
            Done::Got(resource, stored) => {
                let mut e = match &stored {
                    Some(s) => versioned(s, 200),
                    None => json!({"response": {"status": status_line(200)}}),
                };
                e["resource"] = resource;
                e
            }
        }
    }
}

fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    format!("{code} {reason}").trim_end().to_string()
}

/// Runs `entries` in the spec's order inside the caller's transaction; returns what each did,
/// with its index.
fn transaction(cx: &Cx, conn: &mut DbConn, entries: &[Entry]) -> FhirResult<Vec<(usize, Done)>> {
    let of = |m: Method| entries.iter().filter(move |e| e.method == m);
    let mut done: Vec<(usize, Done)> = Vec::with_capacity(entries.len());
    // What was written or deleted, with the entry that did it.
    let mut touched: Vec<(Stored, &Entry)> = Vec::new();

    // Every resource an entry deletes or writes, once (the spec: identities, resolved ones
    // included, must not overlap).
    let mut identities: HashSet<(String, String)> = HashSet::new();
    let overlap = |e: &Entry, t: &str, id: &str| {
        e.fail(FhirError::BadRequest(format!(
            "{t}/{id} is the target of more than one entry of this transaction"
        )))
    };

    // 1. DELETE
    for e in of(Method::Delete) {
        let gone = delete(cx, conn, e).map_err(|err| e.fail(err))?;
        for s in &gone {
            if !identities.insert((s.resource_type.clone(), s.id.clone())) {
                return Err(overlap(e, &s.resource_type, &s.id));
            }
        }
        touched.extend(gone.iter().map(|s| (s.clone(), e)));
        done.push((e.index, Done::Deleted));
    }

    // 2. Where every POST, PUT and PATCH goes (conditional ones matched now, after the deletes), and
    //    the fullUrl each new identity stands for.
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut conditions: HashSet<(String, String)> = HashSet::new();
    for e in entries
        .iter()
        .filter(|e| e.method != Method::Get && e.method != Method::Delete)
    {
        if let (Method::Post, Some(cond)) = (e.method, &e.if_none_exist) {
            if !conditions.insert((e.url.clone(), cond.clone())) {
                return Err(e.fail(FhirError::BadRequest(format!(
                    "two entries create {} under the same ifNoneExist '{cond}'",
                    e.url
                ))));
            }
        }
        let slot = slot(cx, conn, e).map_err(|err| e.fail(err))?;
        if !identities.insert((slot.ty.clone(), slot.id.clone())) {
            return Err(overlap(e, &slot.ty, &slot.id));
        }
        if let Some(fu) = &e.full_url {
            let to = format!("{}/{}", slot.ty, slot.id);
            if ids.insert(fu.clone(), to).is_some() {
                return Err(e.fail(FhirError::BadRequest(format!(
                    "the fullUrl {fu} is used by more than one entry"
                ))));
            }
        }
        slots.insert(e.index, slot);
    }

    // 3. POST (new resources stored together), then PUT and PATCH, with references rewritten.
    let mut fresh = Vec::new();
    let mut fresh_at: Vec<&Entry> = Vec::new();
    for e in of(Method::Post) {
        let slot = &slots[&e.index];
        if let Some(existing) = &slot.existing {
            cx.note_existing(conn, existing)
                .map_err(|err| e.fail(err))?;
            done.push((
                e.index,
                Done::Written {
                    stored: existing.clone(),
                    status: 200,
                },
            ));
            continue;
        }
        let mut resource = e.resource.clone().unwrap_or(Value::Null);
        rewrite(cx, conn, &mut resource, &ids).map_err(|err| e.fail(err))?;
        cx.check_create(&slot.ty, &slot.id, &resource)
            .map_err(|err| e.fail(err))?;
        fresh.push((slot.ty.clone(), slot.id.clone(), resource));
        fresh_at.push(e);
    }
    for (e, stored) in fresh_at.into_iter().zip(cx.create_many(conn, fresh)?) {
        touched.push((stored.clone(), e));
        done.push((
            e.index,
            Done::Written {
                stored,
                status: 201,
            },
        ));
    }
    for m in [Method::Put, Method::Patch] {
        for e in of(m) {
            let slot = &slots[&e.index];
            let d = write(cx, conn, e, slot, &ids).map_err(|err| e.fail(err))?;
            if let Done::Written { stored, .. } = &d {
                touched.push((stored.clone(), e));
            }
            done.push((e.index, d));
        }
    }

    // 4. GET, seeing every write above.
    for e in of(Method::Get) {
        let d = get(cx, conn, e).map_err(|err| e.fail(err))?;
        done.push((e.index, d));
    }

    // 5. What was written refers to what exists; what was deleted is referenced by nothing.
    let named: Vec<(&Stored, String)> = touched
        .iter()
        .map(|(s, e)| {
            let name = format!("Bundle.entry[{}] ({}/{})", e.index, s.resource_type, s.id);
            (s, name)
        })
        .collect();
    cx.check_integrity_named(conn, &named)?;
    Ok(done)
}

fn delete(cx: &Cx, conn: &mut DbConn, e: &Entry) -> FhirResult<Vec<Stored>> {
    let (_, query) = e.parts();
    match (e.segments().as_slice(), query) {
        ([t, id], None) => Ok(cx
            .delete(conn, t, id, e.if_match, false)?
            .into_iter()
            .map(|w| w.stored)
            .collect()),
        ([t], Some(q)) => Ok(cx
            .conditional_delete(conn, t, q, false)?
            .into_iter()
            .map(|w| w.stored)
            .collect()),
        _ => Err(FhirError::BadRequest(
            "a DELETE entry's URL is Type/id or Type?search".into(),
        )),
    }
}

fn slot(cx: &Cx, conn: &mut DbConn, e: &Entry) -> FhirResult<Slot> {
    let (_, query) = e.parts();
    let segs = e.segments();
    let resource = e.resource.as_ref();
    let body_type = resource
        .and_then(|r| r.get("resourceType"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (e.method, segs.as_slice(), query) {
        (Method::Post, [t], None) => {
            if body_type != *t {
                return Err(FhirError::invalid(
                    format!("the entry's resource is a {body_type}, its URL says {t}"),
                    "resourceType",
                ));
            }
            super::rule(cx.access, Perm::Create, t)?;
            let existing = match &e.if_none_exist {
                Some(cond) => cx.existing_match(conn, t, cond, "ifNoneExist")?,
                None => None,
            };
            let id = match &existing {
                Some(s) => s.id.clone(),
                None => uuid::Uuid::now_v7().to_string(),
            };
            Ok(Slot {
                ty: t.to_string(),
                id,
                existing,
            })
        }
        (Method::Put | Method::Patch, [t, id], None) => Ok(Slot {
            ty: t.to_string(),
            id: id.to_string(),
            existing: None,
        }),
        (Method::Put, [t], Some(q)) => {
            let body_id = resource.and_then(|r| r.get("id")).and_then(Value::as_str);
            let id = cx.conditional_update_id(conn, t, q, body_id)?;
            Ok(Slot {
                ty: t.to_string(),
                id,
                existing: None,
            })
        }
        (Method::Patch, [t], Some(q)) => {
            match cx.existing_match(conn, t, q, "The conditional patch")? {
                Some(s) => Ok(Slot {
                    ty: t.to_string(),
                    id: s.id,
                    existing: None,
                }),
                None => Err(FhirError::NotFound(format!("no {t} matches '{q}'"))),
            }
        }
        (m, _, _) => Err(FhirError::BadRequest(format!(
            "a {} entry's URL is {}",
            m.name(),
            match m {
                Method::Post => "Type",
                _ => "Type/id or Type?search",
            }
        ))),
    }
}

fn write(
    cx: &Cx,
    conn: &mut DbConn,
    e: &Entry,
    slot: &Slot,
    ids: &HashMap<String, String>,
) -> FhirResult<Done> {
    let mut resource = e.resource.clone().unwrap_or(Value::Null);
    rewrite(cx, conn, &mut resource, ids)?;
    let (ty, id) = (slot.ty.as_str(), slot.id.as_str());
    match e.method {
        Method::Put => {
            if e.parts().1.is_some() {
                resource["id"] = Value::String(id.to_string());
            }
            let w = cx.update(conn, ty, id, resource, e.if_match)?;
            let status = if w.created { 201 } else { 200 };
            Ok(Done::Written {
                stored: w.stored,
                status,
            })
        }
        Method::Patch => {
            let patch = Patch::from_entry(&resource)?;
            let w = cx.patch(conn, ty, id, &patch, e.if_match)?;
            Ok(Done::Written {
                stored: w.stored,
                status: 200,
            })
        }
        _ => Err(FhirError::Internal("not a write".into())),
    }
}

/// Rewrites, everywhere in `v`, the fullUrls of this transaction's entries to the references of
/// their resources (`urn:uuid:…` to `Patient/…`), also inside narrative links, and resolves
/// conditional references (`Patient?identifier=…`) to the one resource they match.
fn rewrite(
    cx: &Cx,
    conn: &mut DbConn,
    v: &mut Value,
    ids: &HashMap<String, String>,
) -> FhirResult<()> {
    match v {
        Value::Object(m) => rewrite_object(cx, conn, m, ids),
        Value::Array(items) => {
            for item in items {
                rewrite(cx, conn, item, ids)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn rewrite_object(
    cx: &Cx,
    conn: &mut DbConn,
    m: &mut Map<String, Value>,
    ids: &HashMap<String, String>,
) -> FhirResult<()> {
    for (k, child) in m.iter_mut() {
        match child {
            Value::String(s) => {
                if let Some(to) = ids.get(s.as_str()) {
                    *s = to.clone();
                } else if k == "reference" {
                    if let Some(to) = conditional_reference(cx, conn, s)? {
                        *s = to;
                    }
                } else if k == "div" && s.contains("urn:") {
                    *s = rewrite_narrative(s, ids);
                }
            }
            other => rewrite(cx, conn, other, ids)?,
        }
    }
    Ok(())
}

/// The narrative with each `urn:uuid:…` / `urn:oid:…` that is an entry's fullUrl replaced by its
/// reference: one pass over the text, whatever the number of entries.
fn rewrite_narrative(div: &str, ids: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(div.len());
    let mut rest = div;
    while let Some(at) = rest.find("urn:") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c == '"' || c == '\'' || c == '<' || c == '>' || c.is_whitespace())
            .unwrap_or(tail.len());
        let token = &tail[..end];
        out.push_str(ids.get(token).map_or(token, String::as_str));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `Type?search` resolved to `Type/id`; None for anything else. No match, or several, is a 412.
fn conditional_reference(cx: &Cx, conn: &mut DbConn, r: &str) -> FhirResult<Option<String>> {
    let Some((t, q)) = r.split_once('?') else {
        return Ok(None);
    };
    if !fhir::is_enabled(t) {
        return Ok(None);
    }
    let found = cx.matches(conn, t, q, 2)?;
    match found.as_slice() {
        [id] => Ok(Some(format!("{t}/{id}"))),
        [] => Err(FhirError::PreconditionFailed(format!(
            "the conditional reference '{r}' matches no resource"
        ))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "the conditional reference '{r}' matches more than one resource"
        ))),
    }
}

fn get(cx: &Cx, conn: &mut DbConn, e: &Entry) -> FhirResult<Done> {
    let (_, query) = e.parts();
    let params: Vec<(String, String)> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    match (e.segments().as_slice(), query) {
        ([t, id], None) => {
            let s = cx.read(conn, t, id, None)?;
            cx.audit_access(conn, Interaction::Read, &s)?;
            Ok(Done::Got(s.json()?, Some(s)))
        }
        ([t, id, "_history", v], None) => {
            let version = v
                .parse::<i64>()
                .map_err(|_| FhirError::NotFound(format!("{t}/{id} has no version '{v}'")))?;
            let s = cx.read(conn, t, id, Some(version))?;
            cx.audit_access(conn, Interaction::Vread, &s)?;
            Ok(Done::Got(s.json()?, Some(s)))
        }
        (segs, _) if segs.len() <= 1 => {
            let scope = match segs.first() {
                Some(t) => SearchScope::Type(t.to_string()),
                None => SearchScope::System,
            };
            let interaction = match scope {
                SearchScope::System => Interaction::SearchSystem,
                _ => Interaction::SearchType,
            };
            let bundle = cx.engine.search_in(conn, cx.access, scope, &params)?;
            cx.audit_search(conn, interaction, &e.url, &params)?;
            Ok(Done::Got(bundle, None))
        }
        _ => Err(FhirError::BadRequest(
            "a GET entry reads (Type/id, Type/id/_history/v) or searches (Type?…)".into(),
        )),
    }
}
