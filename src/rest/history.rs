//! The history interaction at instance, type and system level: a `history` Bundle, newest first,
//! paged with a keyset cursor so pages stay stable while new versions are written.

use serde_json::{json, Value};

use super::{ensure_type, Engine, Stored};
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

fn parse_cursor(v: &str) -> Option<(i64, i64)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Engine {
    pub async fn history(
        &self,
        level: HistoryLevel,
        params: &[(String, String)],
    ) -> FhirResult<Value> {
        let mut q = HistoryQuery {
            limit: self.default_count,
            ..Default::default()
        };
        match &level {
            HistoryLevel::System => {}
            HistoryLevel::Type(t) => {
                ensure_type(t)?;
                q.res_type = Some(t.clone());
            }
            HistoryLevel::Instance(t, i) => {
                ensure_type(t)?;
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
        let mut fetch = q.clone();
        fetch.limit = limit + 1;
        let mut rows = self
            .store
            .read(move |conn| store::history(conn, &fetch))
            .await?;
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
        }
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(self.history_bundle(&level, params, &rows, more))
    }

    fn history_bundle(
        &self,
        level: &HistoryLevel,
        params: &[(String, String)],
        rows: &[VersionRow],
        more: bool,
    ) -> Value {
        let base = &self.base_url;
        let link = |extra: Option<(i64, i64)>| {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params.iter().filter(|(k, _)| k != CURSOR) {
                ser.append_pair(k, v);
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
        if let (true, Some(last)) = (more, rows.last()) {
            links.push(
                json!({"relation": "next", "url": link(Some((last.last_updated, last.seq)))}),
            );
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
