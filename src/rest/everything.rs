//! `Patient/[id]/$everything` (patient-operation-everything.html): the patient and every resource
//! of its compartment the caller may read, as a searchset Bundle, with `_since`, `_type` and
//! `_count` paging. Each type is an ordinary compartment search, so the caller's scopes and
//! compartment apply exactly as they do to searches.

use serde_json::{json, Value};

use super::{ensure_type, now_micros, Engine, SearchScope};
use crate::auth::{Access, Perm, Rule};
use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, format_instant};
use crate::store::search::run;

/// The most resources one `$everything` gathers (more: 413, narrow it with `_type` or `_since`).
const MAX_EVERYTHING: usize = 10_000;
/// The paging parameter of the `next` links.
const OFFSET: &str = "_offset";

impl Engine {
    pub async fn patient_everything(
        &self,
        access: &Access,
        id: &str,
        params: &[(String, String)],
    ) -> FhirResult<Value> {
        let patient = self.read(access, "Patient", id).await?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let number = |name: &str, default: usize| -> FhirResult<usize> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.parse::<usize>().map_err(|_| {
                    FhirError::invalid(format!("{name} must be a whole number, not '{v}'"), name)
                }),
            }
        };
        let count =
            number("_count", self.default_count as usize)?.clamp(1, self.max_count as usize);
        let offset = number(OFFSET, 0)?;
        let asked: Option<Vec<String>> = get("_type").map(|v| {
            v.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        });
        if let Some(types) = &asked {
            for t in types {
                ensure_type(t)?;
            }
        }
        // The clinical compartment (not the audit trail), as far as the caller may search it.
        let types: Vec<String> = fhir::ENABLED_TYPES
            .iter()
            .filter(|t| !fhir::is_server_written(t) && **t != "Patient")
            .filter(|t| crate::search::patient_compartment(t).is_some())
            .filter(|t| asked.as_ref().is_none_or(|a| a.iter().any(|x| x == *t)))
            .filter(|t| access.rule(Perm::Search, t) != Rule::Deny)
            .map(|t| t.to_string())
            .collect();
        let mut filters: Vec<(String, String)> = vec![("_count".into(), "1000".into())];
        if let Some(since) = get("_since") {
            filters.push(("_lastUpdated".into(), format!("ge{since}")));
        }
        let (engine, access, pid) = (self.clone(), access.clone(), id.to_string());
        let found: Vec<(String, String, String)> = self
            .store
            .snapshot(move |conn| {
                let mut out = Vec::new();
                for t in &types {
                    let scope = SearchScope::Compartment {
                        comp_type: "Patient".into(),
                        id: pid.clone(),
                        target_type: t.clone(),
                    };
                    let mut planned = engine.plan_search(&access, scope, &filters, true)?;
                    planned.query.count = 1000;
                    let mut cursor = None;
                    loop {
                        let page = run(
                            conn,
                            engine.store.backend(),
                            &planned.query,
                            cursor.as_ref(),
                        )?;
                        for hit in &page.matches {
                            if let Some(c) = page.contents.get(&hit.rid) {
                                out.push((hit.res_type.clone(), hit.res_id.clone(), c.clone()));
                            }
                        }
                        if out.len() > MAX_EVERYTHING {
                            return Err(FhirError::PayloadTooLarge(format!(
                                "$everything would return more than {MAX_EVERYTHING} resources; \
                                 narrow it with _type or _since"
                            )));
                        }
                        match page.next {
                            Some(n) => cursor = Some(n),
                            None => break,
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        // The patient first, then the compartment (each search already in its own order).
        let mut all: Vec<(String, String, String)> = Vec::with_capacity(found.len() + 1);
        all.push((
            "Patient".into(),
            patient.id.clone(),
            patient.content.clone().unwrap_or_default(),
        ));
        all.extend(found);
        let total = all.len();
        let entries: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(count)
            .filter_map(|(t, i, c)| {
                let resource: Value = serde_json::from_str(c).ok()?;
                Some(json!({
                    "fullUrl": format!("{}/{t}/{i}", self.base_url),
                    "resource": resource,
                    "search": {"mode": "match"},
                }))
            })
            .collect();
        let link = |off: usize| {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params.iter().filter(|(k, _)| k != OFFSET) {
                ser.append_pair(k, v);
            }
            if off > 0 {
                ser.append_pair(OFFSET, &off.to_string());
            }
            let qs = ser.finish();
            let base = format!("{}/Patient/{id}/$everything", self.base_url);
            if qs.is_empty() {
                base
            } else {
                format!("{base}?{qs}")
            }
        };
        let mut links = vec![json!({"relation": "self", "url": link(offset)})];
        if offset + count < total {
            links.push(json!({"relation": "next", "url": link(offset + count)}));
        }
        if offset > 0 {
            links.push(json!({"relation": "previous", "url": link(offset.saturating_sub(count))}));
        }
        let mut b = json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::now_v7().to_string(),
            "meta": {"lastUpdated": format_instant(now_micros())},
            "type": "searchset",
            "total": total,
            "link": links,
        });
        if !entries.is_empty() {
            b["entry"] = json!(entries);
        }
        Ok(b)
    }
}

/// How far `CarePlan/$everything` follows references, and how many resources it gathers.
const PLAN_DEPTH: usize = 3;
const PLAN_MAX: usize = 1_000;

impl Engine {
    /// `CarePlan/[id]/$everything`: the plan package. The plan, then what it refers to (goals,
    /// care team, conditions, activities, supporting information), and in turn what those refer to
    /// (a goal's outcome observations, an observation's questionnaire response), up to three links
    /// away. Only the plan's own patient is included, and no patient's references are followed,
    /// so another patient's data is never reached; every resource is read as the caller may.
    pub async fn careplan_everything(&self, access: &Access, id: &str) -> FhirResult<Value> {
        let plan = self.read(access, "CarePlan", id).await?;
        let content = |s: &super::Stored| s.json().ok();
        let subject = content(&plan)
            .and_then(|v| {
                let r = v["subject"]["reference"].as_str()?.to_string();
                super::integrity::local(&r, &self.base_url)
            })
            .map(|(t, i)| format!("{t}/{i}"));
        let mut seen = std::collections::HashSet::from([format!("CarePlan/{id}")]);
        let mut out = vec![plan.clone()];
        let mut frontier = vec![plan];
        for _ in 0..PLAN_DEPTH {
            let mut next = Vec::new();
            for s in &frontier {
                if s.resource_type == "Patient" {
                    continue;
                }
                let Some(v) = content(s) else { continue };
                for (_, t, i) in super::integrity::local_references(&v, &self.base_url) {
                    let key = format!("{t}/{i}");
                    if fhir::is_server_written(&t)
                        || (t == "Patient" && Some(&key) != subject.as_ref())
                        || !seen.insert(key)
                    {
                        continue;
                    }
                    // What the caller may not read (or what is gone) is left out, not an error.
                    if let Ok(found) = self.read(access, &t, &i).await {
                        next.push(found);
                    }
                }
            }
            out.extend(next.iter().cloned());
            if out.len() > PLAN_MAX {
                return Err(FhirError::PayloadTooLarge(format!(
                    "the plan package holds more than {PLAN_MAX} resources"
                )));
            }
            frontier = next;
        }
        let entries: Vec<Value> = out
            .iter()
            .filter_map(|s| {
                Some(json!({
                    "fullUrl": format!("{}/{}/{}", self.base_url, s.resource_type, s.id),
                    "resource": content(s)?,
                    "search": {"mode": "match"},
                }))
            })
            .collect();
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::now_v7().to_string(),
            "meta": {"lastUpdated": format_instant(now_micros())},
            "type": "searchset",
            "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{}/CarePlan/{id}/$everything", self.base_url)}],
            "entry": entries,
        }))
    }
}
