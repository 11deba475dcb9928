//! The search interaction: type, system and compartment searches, answered with a `searchset`
//! Bundle. Pages are keyset-paged (a cursor holds the sort keys of the boundary row), so links keep
//! working while resources are added; `_include`/`_revinclude` add each resource once.

use serde_json::{json, Value};

use super::{ensure_type, now_micros, rule, Engine};
use crate::auth::{Access, Perm, Rule};
use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, format_instant, subset, Subset};
use crate::search::{self, Condition, ParseOptions, SearchQuery, Summary, CURSOR};
use crate::store::search::{run, Cursor, Hit, Page};

/// Where a search was asked.
#[derive(Debug, Clone)]
pub enum SearchScope {
    Type(String),
    /// `GET [base]?_type=…` (all types when `_type` is absent).
    System,
    /// `GET [base]/Patient/[id]/[type]`.
    Compartment {
        comp_type: String,
        id: String,
        target_type: String,
    },
}

/// A parsed search, ready to run: the query, the path its links start from, and the page asked.
pub(crate) struct Planned {
    pub(crate) query: SearchQuery,
    path: String,
    pub(crate) cursor: Option<Cursor>,
}

/// Whether a search could find or include AuditEvents: all types, or AuditEvent named anywhere
/// (its types, a chain or `_has`, an include, or the caller's visibility).
fn touches_audit(query: &SearchQuery) -> bool {
    query.types.is_empty() || format!("{query:?}").contains("AuditEvent")
}

impl Engine {
    pub async fn search(
        &self,
        access: &Access,
        scope: SearchScope,
        params: &[(String, String)],
        strict: bool,
    ) -> FhirResult<Value> {
        let planned = self.plan_search(access, scope, params, strict)?;
        if touches_audit(&planned.query) {
            self.audit_current().await?;
        }
        let backend = self.store.backend();
        let (q, cursor) = (planned.query.clone(), planned.cursor.clone());
        let page = self
            .store
            .snapshot(move |conn| run(conn, backend, &q, cursor.as_ref()))
            .await?;
        Ok(self.bundle(&planned.path, &planned.query, page))
    }

    /// A search inside a transaction (a GET entry of a Bundle).
    pub(crate) fn search_in(
        &self,
        conn: &mut crate::store::DbConn,
        access: &Access,
        scope: SearchScope,
        params: &[(String, String)],
    ) -> FhirResult<Value> {
        let planned = self.plan_search(access, scope, params, false)?;
        if touches_audit(&planned.query) {
            crate::audit::catch_up_in(conn, &self.base_url)?;
        }
        let page = run(
            conn,
            self.store.backend(),
            &planned.query,
            planned.cursor.as_ref(),
        )?;
        Ok(self.bundle(&planned.path, &planned.query, page))
    }

    pub(crate) fn plan_search(
        &self,
        access: &Access,
        scope: SearchScope,
        params: &[(String, String)],
        strict: bool,
    ) -> FhirResult<Planned> {
        let (types, path) = match &scope {
            SearchScope::Type(t) => {
                ensure_type(t)?;
                rule(access, Perm::Search, t)?;
                (vec![t.clone()], t.clone())
            }
            SearchScope::System => {
                let asked: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k == "_type")
                    .flat_map(|(_, v)| v.split(',').map(str::trim).map(str::to_string))
                    .filter(|t| !t.is_empty())
                    .collect();
                for t in &asked {
                    ensure_type(t)?;
                    rule(access, Perm::Search, t)?;
                }
                let types: Vec<String> = if asked.is_empty() {
                    // Every type the caller may search.
                    // Every type the caller may search (the audit trail only when named).
                    fhir::ENABLED_TYPES
                        .iter()
                        .filter(|t| !fhir::is_server_written(t))
                        .filter(|t| access.rule(Perm::Search, t) != Rule::Deny)
                        .map(|t| t.to_string())
                        .collect()
                } else {
                    asked
                };
                if types.is_empty() {
                    return Err(FhirError::Forbidden(
                        "the access token's scopes do not permit searching any resource type"
                            .into(),
                    ));
                }
                (types, String::new())
            }
            SearchScope::Compartment {
                comp_type,
                id,
                target_type,
            } => {
                ensure_type(target_type)?;
                rule(access, Perm::Search, target_type)?;
                if comp_type != "Patient" {
                    return Err(FhirError::NotFound(format!(
                        "the {comp_type} compartment is not supported"
                    )));
                }
                if search::patient_compartment(target_type).is_none() {
                    return Err(FhirError::NotFound(format!(
                        "{target_type} is not in the Patient compartment"
                    )));
                }
                (
                    vec![target_type.clone()],
                    format!("{comp_type}/{id}/{target_type}"),
                )
            }
        };
        let opts = ParseOptions {
            default_count: self.default_count,
            max_count: self.max_count,
            strict,
            base_url: &self.base_url,
        };
        let mut query = search::parse(types, params, &opts)?;
        // Row-level access: matches, chains and `_has` see what the caller may search; includes
        // what it may read.
        query.visible = access.visibility(Perm::Search, fhir::ENABLED_TYPES.iter().copied());
        query.readable = access.visibility(Perm::Read, fhir::ENABLED_TYPES.iter().copied());
        if let SearchScope::Compartment {
            comp_type,
            id,
            target_type,
        } = &scope
        {
            query.conditions.push(Condition::Compartment {
                comp_type: comp_type.clone(),
                id: id.clone(),
                params: search::patient_compartment(target_type)
                    .unwrap_or_default()
                    .to_vec(),
            });
        }
        if let SearchScope::System = scope {
            if let Some(t) = params.iter().find(|(k, _)| k == "_type") {
                query.link_params.insert(0, t.clone());
            }
        }
        let cursor = match &query.cursor {
            Some(c) => Some(
                serde_json::from_str::<Cursor>(c)
                    .map_err(|_| FhirError::invalid("this paging link is not valid", CURSOR))?,
            ),
            None => None,
        };
        Ok(Planned {
            query,
            path,
            cursor,
        })
    }

    /// The database's query plan for a type search (for benchmarks and diagnostics).
    pub async fn explain_search(
        &self,
        ty: &str,
        params: &[(String, String)],
    ) -> FhirResult<Vec<String>> {
        ensure_type(ty)?;
        let opts = ParseOptions {
            default_count: self.default_count,
            max_count: self.max_count,
            strict: false,
            base_url: &self.base_url,
        };
        let query = search::parse(vec![ty.to_string()], params, &opts)?;
        let backend = self.store.backend();
        self.store
            .read(move |conn| crate::store::search::explain(conn, backend, &query))
            .await
    }

    fn bundle(&self, path: &str, q: &SearchQuery, page: Page) -> Value {
        let link = |cursor: Option<&Cursor>| {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &q.link_params {
                ser.append_pair(k, v);
            }
            if let Some(c) = cursor {
                ser.append_pair(CURSOR, &serde_json::to_string(c).unwrap_or_default());
            }
            let qs = ser.finish();
            let base = if path.is_empty() {
                self.base_url.clone()
            } else {
                format!("{}/{path}", self.base_url)
            };
            if qs.is_empty() {
                base
            } else {
                format!("{base}?{qs}")
            }
        };
        let own = q
            .cursor
            .as_deref()
            .and_then(|c| serde_json::from_str::<Cursor>(c).ok());
        let mut links = vec![json!({"relation": "self", "url": link(own.as_ref())})];
        if let Some(n) = &page.next {
            links.push(json!({"relation": "next", "url": link(Some(n))}));
        }
        if let Some(p) = &page.prev {
            links.push(json!({"relation": "previous", "url": link(Some(p))}));
        }
        let mode = match (&q.elements, q.summary) {
            (Some(e), _) => Some(Subset::Elements(e.clone())),
            (None, Summary::True) => Some(Subset::Summary),
            (None, Summary::Text) => Some(Subset::Text),
            (None, Summary::Data) => Some(Subset::Data),
            _ => None,
        };
        let entry = |hit: &Hit, search_mode: &str| -> Option<Value> {
            let content = page.contents.get(&hit.rid)?;
            let mut resource: Value = serde_json::from_str(content).ok()?;
            if let (Some(m), "match") = (&mode, search_mode) {
                resource = subset(&resource, m);
            }
            Some(json!({
                "fullUrl": format!("{}/{}/{}", self.base_url, hit.res_type, hit.res_id),
                "resource": resource,
                "search": {"mode": search_mode},
            }))
        };
        let mut entries: Vec<Value> = page
            .matches
            .iter()
            .filter_map(|h| entry(h, "match"))
            .collect();
        entries.extend(page.included.iter().filter_map(|h| entry(h, "include")));
        let mut b = json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "meta": {"lastUpdated": format_instant(now_micros())},
            "type": "searchset",
        });
        if let Some(t) = page.total {
            b["total"] = json!(t);
        }
        b["link"] = json!(links);
        if !entries.is_empty() {
            b["entry"] = json!(entries);
        }
        b
    }
}
