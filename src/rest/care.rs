//! The measurement-based-care operations: `QuestionnaireResponse/$extract` (SDC) and
//! `CarePlan/[id]/$progress`. What storing a response derives is `derive.rs`.

use serde_json::{json, Value};

use super::derive::current;
use super::{admit, rule, write::Cx, Engine, Stored};
use crate::auth::{Access, Perm};
use crate::care::extract::{self, derived_id};
use crate::care::progress::{self, Measure};
use crate::care::scoring::{same_coding, Band, Scoring};
use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::store::DbConn;

impl Engine {
    /// `$extract`: the Observations a QuestionnaireResponse stands for, as a transaction Bundle
    /// (nothing is stored). A response with an id gets `PUT`s to the ids the server itself would
    /// derive, so submitting the Bundle revises rather than duplicates.
    pub async fn extract(&self, access: &Access, response: Value) -> FhirResult<Value> {
        let response = fhir::check_resource(&response).map_err(|e| {
            FhirError::Unprocessable(format!("the QuestionnaireResponse is not valid: {e}"))
        })?;
        if response["resourceType"] != "QuestionnaireResponse" {
            return Err(FhirError::invalid(
                "$extract takes a QuestionnaireResponse",
                "questionnaire-response",
            ));
        }
        let id = response["id"].as_str().unwrap_or_default().to_string();
        let r = rule(access, Perm::Read, "QuestionnaireResponse")?;
        admit(
            &r,
            "QuestionnaireResponse",
            &id,
            &response,
            &self.base_url,
            "extracting",
        )?;
        let canonical = response["questionnaire"]
            .as_str()
            .ok_or_else(|| {
                FhirError::invalid(
                    "the QuestionnaireResponse names no questionnaire",
                    "QuestionnaireResponse.questionnaire",
                )
            })?
            .to_string();
        let engine = self.clone();
        let q = self
            .store
            .snapshot(move |conn| {
                let server = Access::server();
                let cx = Cx {
                    engine: &engine,
                    access: &server,
                    seed: None,
                };
                cx.questionnaire_of(conn, &canonical)
            })
            .await?
            .ok_or_else(|| {
                FhirError::Unprocessable(format!(
                    "the questionnaire {} is not known to this server",
                    response["questionnaire"]
                ))
            })?;
        let scoring = Scoring::of(&q)?;
        let source = (!id.is_empty()).then(|| format!("QuestionnaireResponse/{id}"));
        if !extract::is_live(&response) {
            return Err(FhirError::Unprocessable(format!(
                "only a completed or amended response is extracted, not a {} one",
                response["status"].as_str().unwrap_or("status-less")
            )));
        }
        let extraction = extract::extract(&q, scoring.as_ref(), &response, source.as_deref())?;
        let entries: Vec<Value> = extraction
            .observations
            .into_iter()
            .map(|d| match &source {
                Some(src) => {
                    let oid = derived_id(src, &d.key);
                    let mut o = d.observation;
                    o["id"] = json!(oid);
                    json!({"fullUrl": format!("{}/Observation/{oid}", self.base_url), "resource": o,
                        "request": {"method": "PUT", "url": format!("Observation/{oid}")}})
                }
                None => json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                    "resource": d.observation, "request": {"method": "POST", "url": "Observation"}}),
            })
            .collect();
        Ok(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    }

    /// `$progress`: for each Goal of the plan the caller may read, each of its measured targets
    /// with the patient's scores (as far as the caller may read them), baseline, latest, trend,
    /// status and the measure's severity bands.
    pub async fn progress(
        &self,
        access: &Access,
        plan_id: &str,
    ) -> FhirResult<(Stored, Vec<Stored>, Vec<Measure>)> {
        let plan = self.read(access, "CarePlan", plan_id).await?;
        let p = plan.json()?;
        let patient = p["subject"]["reference"]
            .as_str()
            .and_then(|r| super::integrity::local(r, &self.base_url))
            .filter(|(t, _)| t == "Patient")
            .map(|(_, i)| i);
        let mut goals = Vec::new();
        for g in p["goal"].as_array().into_iter().flatten() {
            let Some((t, i)) = g["reference"]
                .as_str()
                .and_then(|r| super::integrity::local(r, &self.base_url))
            else {
                continue;
            };
            if t != "Goal" {
                continue;
            }
            // A goal the caller may not read (or one that is gone) is left out.
            if let Ok(found) = self.read(access, "Goal", &i).await {
                goals.push(found);
            }
        }
        let Some(patient) = patient else {
            return Ok((plan, goals, Vec::new()));
        };
        let engine = self.clone();
        let caller = access.clone();
        let goal_values = goals
            .iter()
            .map(Stored::json)
            .collect::<FhirResult<Vec<_>>>()?;
        let goal_ids: Vec<String> = goals.iter().map(|g| g.id.clone()).collect();
        let measures = self
            .store
            .snapshot(move |conn| {
                let cx = Cx {
                    engine: &engine,
                    access: &caller,
                    seed: None,
                };
                let server = Access::server();
                let scx = Cx {
                    engine: &engine,
                    access: &server,
                    seed: None,
                };
                let mut out = Vec::new();
                for (gid, g) in goal_ids.iter().zip(&goal_values) {
                    let mut codes: Vec<Value> = Vec::new();
                    for t in g["target"].as_array().into_iter().flatten() {
                        for c in t["measure"]["coding"].as_array().into_iter().flatten() {
                            if c["code"].is_string() && !codes.iter().any(|x| same_coding(x, c)) {
                                codes.push(c.clone());
                            }
                        }
                    }
                    for code in codes {
                        let (series, _) = cx.scores(conn, &patient, &code)?;
                        let bands = match series.last() {
                            Some(last) => bands_of(&scx, conn, &last.reference, &code)?,
                            None => Vec::new(),
                        };
                        let targets: Vec<Value> = progress::targets_for(g, &code)
                            .into_iter()
                            .cloned()
                            .collect();
                        let baseline = progress::baseline(&series, progress::start_of(g)).cloned();
                        out.push(Measure {
                            goal: format!("Goal/{gid}"),
                            description: g["description"]["text"].as_str().map(str::to_string),
                            code,
                            targets,
                            trend: progress::trend(&series),
                            baseline,
                            status: g["achievementStatus"]["coding"][0]["code"]
                                .as_str()
                                .map(str::to_string),
                            series,
                            bands,
                        });
                    }
                }
                Ok(out)
            })
            .await?;
        Ok((plan, goals, measures))
    }
}

/// The severity bands of the instrument that scored `observation` (`Observation/id`), found
/// through the response it was derived from; none when it was not derived from a scored one.
fn bands_of(scx: &Cx, conn: &mut DbConn, observation: &str, code: &Value) -> FhirResult<Vec<Band>> {
    let oid = observation.trim_start_matches("Observation/");
    let Some(o) = current(conn, "Observation", oid)? else {
        return Ok(Vec::new());
    };
    let qr = o["derivedFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["reference"].as_str())
        .find_map(|r| r.strip_prefix("QuestionnaireResponse/"));
    let Some(r) = qr
        .map(|id| current(conn, "QuestionnaireResponse", id))
        .transpose()?
        .flatten()
    else {
        return Ok(Vec::new());
    };
    let Some(q) = r["questionnaire"]
        .as_str()
        .map(|c| scx.questionnaire_of(conn, c))
        .transpose()?
        .flatten()
    else {
        return Ok(Vec::new());
    };
    Ok(match Scoring::of(&q) {
        Ok(Some(s)) if same_coding(&s.total_code, code) => s.bands,
        _ => Vec::new(),
    })
}
