//! Derived writes: what storing a resource implies, written in the same transaction by the server
//! itself (not under the caller's scopes), so a failure anywhere leaves nothing behind.
//!
//! - A Questionnaire's scoring extension must be well formed (422 otherwise).
//! - A QuestionnaireResponse to a scored or extractable Questionnaire derives its Observations
//!   (SDC observation-based extraction, with the total score and its severity band), raises a
//!   safety Flag and an urgent Task for a safety item above its threshold, and re-evaluates the
//!   patient's Goals measured by that total. Derived resources have ids fixed by the response, so
//!   storing it again revises them instead of adding new ones; a response that is no longer
//!   completed or amended (entered-in-error, deleted) retracts them.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{write::Cx, Stored};
use crate::auth::Access;
use crate::care::extract::{self, derived_id, Extraction, Signal};
use crate::care::progress::{self, Point};
use crate::care::scoring::{self, Scoring};
use crate::error::{FhirError, FhirResult};
use crate::store::{self, DbConn};

const FLAG_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/flag-category";
const FLAG_DETAIL: &str = "http://hl7.org/fhir/StructureDefinition/flag-detail";
const ENTERED_IN_ERROR: &str = "entered-in-error";

fn parse(content: &str) -> FhirResult<Value> {
    serde_json::from_str(content).map_err(|e| FhirError::Internal(format!("stored resource: {e}")))
}

/// A resource without what the server stamps on it (`meta.versionId`, `meta.lastUpdated`).
fn unstamped(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().map(|o| o.remove("meta"));
        }
    }
    v
}

/// The live (not deleted) current content of `ty/id`.
pub(super) fn current(conn: &mut DbConn, ty: &str, id: &str) -> FhirResult<Option<Value>> {
    match store::version(conn, ty, id, None)? {
        Some(row) if !row.is_deleted() => Ok(Some(parse(&row.content)?)),
        _ => Ok(None),
    }
}

impl Cx<'_> {
    /// What storing `stored` implies; the derived versions written (for the interaction's audit
    /// record).
    pub(crate) fn derive(&self, conn: &mut DbConn, stored: &Stored) -> FhirResult<Vec<Stored>> {
        match stored.resource_type.as_str() {
            "Questionnaire" => {
                if let Some(c) = &stored.content {
                    Scoring::of(&parse(c)?)?;
                }
                Ok(Vec::new())
            }
            "QuestionnaireResponse" => {
                let server = Access::server();
                let scx = Cx {
                    engine: self.engine,
                    access: &server,
                    seed: None,
                };
                scx.derive_from_response(conn, stored)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The Questionnaire a response answers: by canonical `url|version` (the highest version
    /// when none is given), or by a reference to one of ours.
    pub(crate) fn questionnaire_of(
        &self,
        conn: &mut DbConn,
        canonical: &str,
    ) -> FhirResult<Option<Value>> {
        let (url, version) = match canonical.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (canonical, None),
        };
        if url.is_empty() {
            return Ok(None);
        }
        let mut cond = url::form_urlencoded::Serializer::new(String::new());
        cond.append_pair("url", url);
        if let Some(v) = version {
            cond.append_pair("version", v);
        }
        let mut found = Vec::new();
        for id in self.matches(conn, "Questionnaire", &cond.finish(), 20)? {
            if let Some(q) = current(conn, "Questionnaire", &id)? {
                found.push(q);
            }
        }
        found.sort_by(|a, b| {
            let v = |q: &Value| q["version"].as_str().unwrap_or_default().to_string();
            v(a).cmp(&v(b))
        });
        if let Some(q) = found.pop() {
            return Ok(Some(q));
        }
        // `Questionnaire/{id}`, relative or under our base.
        let local = url
            .strip_prefix(self.engine.base_url.as_str())
            .unwrap_or(url);
        match local.trim_start_matches('/').split_once('/') {
            Some(("Questionnaire", id)) if crate::fhir::valid_id(id) => {
                current(conn, "Questionnaire", id)
            }
            _ => Ok(None),
        }
    }

    /// Stores `resource` as `ty/id` unless it already is (apart from the server's stamps).
    fn put_if_changed(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        mut resource: Value,
    ) -> FhirResult<Option<Stored>> {
        resource["id"] = json!(id);
        if let Some(old) = current(conn, ty, id)? {
            if unstamped(old) == unstamped(resource.clone()) {
                return Ok(None);
            }
        }
        Ok(Some(self.update(conn, ty, id, resource, None)?.stored))
    }

    /// Marks `ty/id` entered-in-error, if it is live and not already.
    fn retract(&self, conn: &mut DbConn, ty: &str, id: &str) -> FhirResult<Option<Stored>> {
        match current(conn, ty, id)? {
            Some(mut r) if r["status"] != ENTERED_IN_ERROR => {
                r["status"] = json!(ENTERED_IN_ERROR);
                Ok(Some(self.update(conn, ty, id, unstamped(r), None)?.stored))
            }
            _ => Ok(None),
        }
    }

    /// Stores `ty/id` only if it has never existed: a signal raised once stays as the care team
    /// left it.
    fn create_once(
        &self,
        conn: &mut DbConn,
        ty: &str,
        id: &str,
        mut resource: Value,
    ) -> FhirResult<Option<Stored>> {
        if store::version(conn, ty, id, None)?.is_some() {
            return Ok(None);
        }
        resource["id"] = json!(id);
        Ok(Some(self.update(conn, ty, id, resource, None)?.stored))
    }

    fn derive_from_response(&self, conn: &mut DbConn, stored: &Stored) -> FhirResult<Vec<Stored>> {
        let source = format!("QuestionnaireResponse/{}", stored.id);
        // A deletion retracts what the last version derived.
        let response = match &stored.content {
            Some(c) => parse(c)?,
            None if stored.version > 1 => {
                match store::version(
                    conn,
                    "QuestionnaireResponse",
                    &stored.id,
                    Some(stored.version - 1),
                )? {
                    Some(prev) if !prev.is_deleted() => parse(&prev.content)?,
                    _ => return Ok(Vec::new()),
                }
            }
            None => return Ok(Vec::new()),
        };
        let live = stored.content.is_some() && extract::is_live(&response);
        let Some(canonical) = response["questionnaire"].as_str() else {
            return Ok(Vec::new());
        };
        let Some(q) = self.questionnaire_of(conn, canonical)? else {
            return Ok(Vec::new());
        };
        let scoring = Scoring::of(&q)?;
        let possible = extract::possible_keys(&q, scoring.as_ref());
        if possible.is_empty() {
            return Ok(Vec::new());
        }
        let extraction = if live {
            extract::extract(&q, scoring.as_ref(), &response, Some(&source))?
        } else {
            Extraction::default()
        };
        let mut written = Vec::new();
        let mut wanted = HashSet::new();
        for d in extraction.observations {
            let id = derived_id(&source, &d.key);
            wanted.insert(id.clone());
            written.extend(self.put_if_changed(conn, "Observation", &id, d.observation)?);
        }
        for key in &possible {
            let id = derived_id(&source, key);
            if !wanted.contains(&id) {
                written.extend(self.retract(conn, "Observation", &id)?);
            }
        }
        let patient = response["subject"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Patient/"))
            .filter(|p| crate::fhir::valid_id(p))
            .map(str::to_string);
        let (flag_id, task_id) = (
            derived_id(&source, "#safety-flag"),
            derived_id(&source, "#safety-task"),
        );
        match (&patient, live) {
            (Some(p), true) if !extraction.signals.is_empty() => {
                written.extend(self.raise_safety(
                    conn,
                    p,
                    &source,
                    &response,
                    &extraction.signals,
                    &flag_id,
                    &task_id,
                )?);
            }
            (_, false) => {
                written.extend(self.retract(conn, "Flag", &flag_id)?);
                written.extend(self.retract(conn, "Task", &task_id)?);
            }
            _ => {}
        }
        if let (Some(sc), Some(p)) = (&scoring, &patient) {
            written.extend(self.evaluate_goals(conn, p, sc)?);
        }
        Ok(written)
    }

    /// The safety Flag (linked to the response) and the urgent Task for the care team of the
    /// patient's active CarePlan; each created once.
    #[allow(clippy::too_many_arguments)]
    fn raise_safety(
        &self,
        conn: &mut DbConn,
        patient: &str,
        source: &str,
        response: &Value,
        signals: &[Signal],
        flag_id: &str,
        task_id: &str,
    ) -> FhirResult<Vec<Stored>> {
        let what: Vec<String> = signals
            .iter()
            .map(|s| format!("'{}' scored {}", s.text, scoring::number(s.score)))
            .collect();
        let what = what.join("; ");
        let subject = json!({"reference": format!("Patient/{patient}")});
        let mut flag = json!({
            "resourceType": "Flag",
            "extension": [{"url": FLAG_DETAIL, "valueReference": {"reference": source}}],
            "status": "active",
            "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "safety", "display": "Safety"}]}],
            "code": {"text": format!("Safety concern in a questionnaire response: {what}")},
            "subject": subject,
        });
        if let Some(t) = response["authored"].as_str() {
            flag["period"] = json!({"start": t});
        }
        let mut task = json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "urgent",
            "code": {"text": "Review a safety concern"},
            "description": format!("Review the safety concern raised by {source} today: {what}"),
            "focus": {"reference": source},
            "for": subject,
            "reasonReference": {"reference": format!("Flag/{flag_id}")},
        });
        if let Some(t) = response["authored"].as_str() {
            task["authoredOn"] = json!(t);
        }
        if let Some(team) = self.care_team_of(conn, patient)? {
            task["owner"] = json!({"reference": team});
        }
        let mut out = Vec::new();
        out.extend(self.create_once(conn, "Flag", flag_id, flag)?);
        out.extend(self.create_once(conn, "Task", task_id, task)?);
        Ok(out)
    }

    /// The care team of the patient's active CarePlan, else their active CareTeam.
    fn care_team_of(&self, conn: &mut DbConn, patient: &str) -> FhirResult<Option<String>> {
        let plans = self.matches(
            conn,
            "CarePlan",
            &format!("subject=Patient/{patient}&status=active"),
            20,
        )?;
        for id in plans {
            if let Some(plan) = current(conn, "CarePlan", &id)? {
                if let Some(team) = plan["careTeam"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["reference"].as_str())
                    .find(|r| r.starts_with("CareTeam/"))
                {
                    return Ok(Some(team.to_string()));
                }
            }
        }
        let teams = self.matches(
            conn,
            "CareTeam",
            &format!("subject=Patient/{patient}&status=active"),
            1,
        )?;
        Ok(teams.into_iter().next().map(|id| format!("CareTeam/{id}")))
    }

    /// The patient's live scores with this code, in time order, and every score Observation of it.
    pub(crate) fn scores(
        &self,
        conn: &mut DbConn,
        patient: &str,
        code: &Value,
    ) -> FhirResult<(Vec<Point>, HashSet<String>)> {
        let token = format!(
            "{}|{}",
            code["system"].as_str().unwrap_or_default(),
            code["code"].as_str().unwrap_or_default()
        );
        let mut cond = url::form_urlencoded::Serializer::new(String::new());
        cond.append_pair("patient", &format!("Patient/{patient}"));
        cond.append_pair("code", &token);
        let mut series = Vec::new();
        let mut known = HashSet::new();
        for id in self.matches(conn, "Observation", &cond.finish(), 1000)? {
            let Some(o) = current(conn, "Observation", &id)? else {
                continue;
            };
            let reference = format!("Observation/{id}");
            known.insert(reference.clone());
            if matches!(o["status"].as_str(), Some("entered-in-error" | "cancelled")) {
                continue;
            }
            let value = o["valueInteger"]
                .as_f64()
                .or_else(|| o["valueDecimal"].as_f64())
                .or_else(|| o["valueQuantity"]["value"].as_f64());
            let when = o["effectiveDateTime"]
                .as_str()
                .or_else(|| o["effectivePeriod"]["start"].as_str())
                .or_else(|| o["effectiveInstant"].as_str())
                .or_else(|| o["issued"].as_str());
            let at = when.and_then(crate::fhir::parse_instant_range);
            if let (Some(value), Some(when), Some(at)) = (value, when, at) {
                series.push(Point {
                    at: at.start,
                    when: when.to_string(),
                    value,
                    reference,
                });
            }
        }
        series.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.reference.cmp(&b.reference)));
        Ok((series, known))
    }

    /// Re-evaluates the patient's open Goals measured by this scoring's total.
    fn evaluate_goals(
        &self,
        conn: &mut DbConn,
        patient: &str,
        sc: &Scoring,
    ) -> FhirResult<Vec<Stored>> {
        let mut goals = Vec::new();
        for id in self.matches(conn, "Goal", &format!("patient=Patient/{patient}"), 200)? {
            // Locked before the scores are read: a concurrent score's transaction re-evaluates
            // after this one commits (and sees its score), so neither evaluation is lost.
            store::current_for_update(conn, "Goal", &id)?;
            if let Some(g) = current(conn, "Goal", &id)? {
                let open = !matches!(
                    g["lifecycleStatus"].as_str(),
                    Some("cancelled" | "entered-in-error" | "rejected" | "completed")
                );
                if open && !progress::targets_for(&g, &sc.total_code).is_empty() {
                    goals.push((id, g));
                }
            }
        }
        if goals.is_empty() {
            return Ok(Vec::new());
        }
        let (series, known) = self.scores(conn, patient, &sc.total_code)?;
        let mut out = Vec::new();
        for (id, g) in goals {
            if let Some(new) = progress::evaluate(&g, &sc.total_code, &sc.rules, &series, &known) {
                out.extend(self.put_if_changed(conn, "Goal", &id, unstamped(new))?);
            }
        }
        Ok(out)
    }
}
