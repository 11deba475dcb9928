//! The history interaction at instance, type and system level: a `history` Bundle, newest first,
//! paged with a keyset cursor so pages stay stable while new versions are written.

use serde_json::{json, Value};

use std::collections::HashMap;

use super::{ensure_type, rule, Engine, Stored};
use crate::auth::{Access, Perm, Rule};
use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, format_instant, parse_instant_range};
use crate::store::{self, HistoryQuery, VersionRow};

/// Where the history interaction was called.
#[derive(Debug, Clone)]
pub enum HistoryLevel {
    System,
    Type(String),
    Instance(String, String),
}

impl HistoryLevel {
    fn path(&self) -> String {
        match self {
            HistoryLevel::System => "_history".into(),
            HistoryLevel::Type(t) => format!("{t}/_history"),
            HistoryLevel::Instance(t, i) => format!("{t}/{i}/_history"),
        }
    }
}

/// The page parameter of our next links: `<last_updated>.<seq>` of the last entry shown.
const CURSOR: &str = "_cursor";

/// Versions a restricted caller's history request may examine to fill one page; past that the
/// page ends early, with a next link from where the scan stopped.
const SCAN_LIMIT: usize = 5000;

fn parse_cursor(v: &str) -> Option<(i64, i64)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Engine {
    pub async fn history(
        &self,
        access: &Access,
        level: HistoryLevel,
        params: &[(String, String)],
    ) -> FhirResult<Value> {
        if let HistoryLevel::Type(t) | HistoryLevel::Instance(t, _) = &level {
            if t == "AuditEvent" {
                self.audit_current().await?;
            }
        }
        let mut q = HistoryQuery {
            limit: self.default_count,
            ..Default::default()
        };
        // What the caller may see of each type: instance history is a read, type and system
        // history are searches (SMART: `r` and `s`).
        let mut rules: HashMap<String, Rule> = HashMap::new();
        match &level {
            HistoryLevel::System => {
                // The audit trail is reached at AuditEvent/_history, not in system history.
                for t in fhir::ENABLED_TYPES
                    .iter()
                    .filter(|t| !fhir::is_server_written(t))
                {
                    match access.rule(Perm::Search, t) {
                        Rule::Deny => {}
                        r => {
                            rules.insert(t.to_string(), r);
                        }
                    }
                }
                if rules.is_empty() {
                    return Err(FhirError::Forbidden(
                        "the access token's scopes do not permit searching any resource type"
                            .into(),
                    ));
                }
                let mut types: Vec<String> = rules.keys().cloned().collect();
                types.sort();
                q.types = Some(types);
            }
            HistoryLevel::Type(t) => {
                ensure_type(t)?;
                rules.insert(t.clone(), rule(access, Perm::Search, t)?);
                q.res_type = Some(t.clone());
            }
            HistoryLevel::Instance(t, i) => {
                ensure_type(t)?;
                rules.insert(t.clone(), rule(access, Perm::Read, t)?);
                if !fhir::valid_id(i) {
                    return Err(FhirError::NotFound(format!("{t}/{i} is not a valid id")));
                }
                q.res_type = Some(t.clone());
                q.res_id = Some(i.clone());
            }
        }
        for (name, value) in params {
            let bad = |what: &str| FhirError::BadRequest(format!("{name}={value}: {what}"));
            match name.as_str() {
                "_count" => {
                    let n: i64 = value.parse().map_err(|_| bad("not a whole number"))?;
                    if n < 0 {
                        return Err(bad("must not be negative"));
                    }
                    q.limit = n.min(self.max_count);
                }
                "_since" => {
                    q.since = Some(
                        parse_instant_range(value)
                            .ok_or_else(|| bad("not a FHIR instant"))?
                            .start,
                    )
                }
                "_at" => {
                    let r = parse_instant_range(value).ok_or_else(|| bad("not a FHIR date"))?;
                    q.at = Some((r.start, r.end));
                }
                CURSOR => q.before = Some(parse_cursor(value).ok_or_else(|| bad("bad cursor"))?),
                _ => {} // Unknown parameters are ignored, as the spec allows for lenient handling.
            }
        }
        let limit = q.limit;
        let restricted = rules.values().any(|r| *r != Rule::All);
        let (rows, next) = if restricted {
            self.visible_history(&q, &rules).await?
        } else {
            let mut fetch = q.clone();
            fetch.limit = limit + 1;
            let mut rows = self
                .store
                .read(move |conn| store::history(conn, &fetch))
                .await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let next = rows
                .last()
                .filter(|_| more)
                .map(|r| (r.last_updated, r.seq));
            (rows, next)
        };
        if let (HistoryLevel::Instance(t, i), true) =
            (&level, rows.is_empty() && q.before.is_none())
        {
            // History of a resource that never existed is a 404, not an empty Bundle.
            let (t2, i2) = (t.clone(), i.clone());
            let exists = self
                .store
                .read(move |conn| store::version(conn, &t2, &i2, None))
                .await?
                .is_some();
            if !exists {
                return Err(FhirError::NotFound(format!("{t}/{i} is not known")));
            }
            // Without _since/_at filtering versions out, nothing visible means not the caller's.
            if restricted && q.since.is_none() && q.at.is_none() {
                return Err(FhirError::Forbidden(format!(
                    "{t}/{i} is outside what the access token may read"
                )));
            }
        }
        Ok(self.history_bundle(&level, params, &rows, next))
    }

    /// A page of the versions a restricted caller may see, checked one by one (a version is
    /// judged by its own content; deletions, which have none, are not shown), and where the next
    /// page starts.
    async fn visible_history(
        &self,
        q: &HistoryQuery,
        rules: &HashMap<String, Rule>,
    ) -> FhirResult<(Vec<VersionRow>, Option<(i64, i64)>)> {
        let limit = q.limit as usize;
        let mut fetch = q.clone();
        fetch.limit = (q.limit + 1).max(200);
        let (mut out, mut scanned) = (Vec::new(), 0usize);
        loop {
            let f = fetch.clone();
            let rows = self
                .store
                .read(move |conn| store::history(conn, &f))
                .await?;
            let exhausted = (rows.len() as i64) < fetch.limit;
            for row in rows {
                scanned += 1;
                fetch.before = Some((row.last_updated, row.seq));
                if self.version_visible(&row, rules) {
                    if out.len() == limit {
                        // One more visible version exists: the page is full and has a successor.
                        let next = out.last().map(|r: &VersionRow| (r.last_updated, r.seq));
                        return Ok((out, next));
                    }
                    out.push(row);
                }
            }
            if exhausted {
                return Ok((out, None));
            }
            if scanned >= SCAN_LIMIT {
                return Ok((out, fetch.before));
            }
        }
    }

    fn version_visible(&self, row: &VersionRow, rules: &HashMap<String, Rule>) -> bool {
        match rules.get(&row.res_type) {
            Some(Rule::All) => true,
            Some(rule @ Rule::Only(_)) if !row.is_deleted() => {
                serde_json::from_str::<Value>(&row.content).is_ok_and(|resource| {
                    rule.admits(&row.res_type, &row.res_id, &resource, &self.base_url)
                })
            }
            _ => false,
        }
    }

    fn history_bundle(
        &self,
        level: &HistoryLevel,
        params: &[(String, String)],
        rows: &[VersionRow],
        next: Option<(i64, i64)>,
    ) -> Value {
        let base = &self.base_url;
        let link = |extra: Option<(i64, i64)>| {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params.iter().filter(|(k, _)| k != CURSOR) {
                // The page size served, not the one asked for.
                match (k.as_str(), v.parse::<i64>()) {
                    ("_count", Ok(n)) => ser.append_pair(k, &n.min(self.max_count).to_string()),
                    _ => ser.append_pair(k, v),
                };
            }
            if let Some((lu, seq)) = extra {
                ser.append_pair(CURSOR, &format!("{lu}.{seq}"));
            }
            let qs = ser.finish();
            let path = level.path();
            if qs.is_empty() {
                format!("{base}/{path}")
            } else {
                format!("{base}/{path}?{qs}")
            }
        };
        let own_cursor = params
            .iter()
            .find(|(k, _)| k == CURSOR)
            .and_then(|(_, v)| parse_cursor(v));
        let mut links = vec![json!({"relation": "self", "url": link(own_cursor)})];
        if let Some(n) = next {
            links.push(json!({"relation": "next", "url": link(Some(n))}));
        }
        let entries: Vec<Value> = rows.iter().map(|r| self.history_entry(r)).collect();
        json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "meta": {"lastUpdated": format_instant(super::now_micros())},
            "type": "history",
            "link": links,
            "entry": entries,
        })
    }

    fn history_entry(&self, row: &VersionRow) -> Value {
        let stored = Stored::from_row(row.clone());
        let (ty, id) = (&row.res_type, &row.res_id);
        let (url, status) = match row.method.as_str() {
            "POST" => (ty.clone(), "201 Created"),
            "DELETE" => (format!("{ty}/{id}"), "204 No Content"),
            _ if row.version == 1 => (format!("{ty}/{id}"), "201 Created"),
            _ => (format!("{ty}/{id}"), "200 OK"),
        };
        let mut entry = json!({
            "fullUrl": format!("{}/{ty}/{id}", self.base_url),
            "request": {"method": row.method, "url": url},
            "response": {
                "status": status,
                "etag": stored.etag(),
                "lastModified": format_instant(row.last_updated),
            },
        });
        if let Some(content) = &stored.content {
            if let Ok(resource) = serde_json::from_str::<Value>(content) {
                entry["resource"] = resource;
            }
        }
        entry
    }
}
