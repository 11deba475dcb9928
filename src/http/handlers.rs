//! One thin handler per FHIR interaction: translate the request, call `rest::Engine`, translate the
//! answer. All FHIR behaviour lives in `rest`.

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, HttpResponseBuilder};
use serde_json::Value;

use super::negotiate::{
    body_format, http_date, if_match, negotiate, not_modified, prefer_return, prefer_strict,
    query_params, read_body, Output, Return,
};
use super::{AppState, AuditNote};
use crate::auth::Access;
use crate::error::{information_outcome, FhirError, FhirResult};
use crate::fhir::{self, parse_resource, Format};
use crate::rest::{
    capability_statement, ensure_type, HistoryLevel, Patch, SearchScope, Stored, Written,
};

type Reply = Result<HttpResponse, FhirError>;

/// The authenticated caller, put in the request by the `authenticate` middleware.
pub struct Caller(pub Arc<Access>);

impl FromRequest for Caller {
    type Error = FhirError;
    type Future = Ready<Result<Caller, FhirError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Arc<Access>>()
                .cloned()
                .map(Caller)
                .ok_or_else(|| FhirError::Unauthorized {
                    message: "this request needs a Bearer access token".into(),
                    presented: false,
                }),
        )
    }
}

/// Sends a resource in the negotiated format; stored JSON goes out untouched when it can.
fn send_json_text(mut b: HttpResponseBuilder, out: Output, json: &str) -> Reply {
    if out.format == Format::Json && !out.pretty {
        return Ok(b
            .content_type(out.format.content_type())
            .body(json.to_string()));
    }
    let value: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(e.to_string()))?;
    send_value(b, out, &value)
}

fn send_value(mut b: HttpResponseBuilder, out: Output, value: &Value) -> Reply {
    let body = fhir::render(value, out.format, out.pretty)?;
    Ok(b.content_type(out.format.content_type()).body(body))
}

fn version_headers(b: &mut HttpResponseBuilder, s: &Stored) {
    b.insert_header((header::ETAG, s.etag()))
        .insert_header((header::LAST_MODIFIED, http_date(s.last_updated)));
}

pub async fn metadata(req: HttpRequest, st: web::Data<AppState>) -> Reply {
    let out = negotiate(&req)?;
    send_value(
        HttpResponse::Ok(),
        out,
        &capability_statement(&st.engine.base_url, st.auth.capability_security()),
    )
}

/// SMART discovery (public, at the root and at `[base]/.well-known/smart-configuration`).
pub async fn smart_configuration(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(st.auth.server.smart_configuration().to_string())
}

/// The server's public signing keys (the `jwks_uri` of its authorization server).
pub async fn jwks(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/jwk-set+json")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(st.auth.server.key.jwks().to_string())
}

/// The token endpoint of the built-in authorization server (SMART Backend Services). Answers in
/// OAuth 2's JSON, not FHIR's.
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> HttpResponse {
    let oauth = |status: u16, body: Value| {
        HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
            .content_type("application/json")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"))
            .body(body.to_string())
    };
    let (status, answer, form) = token_answer(&req, payload, &st).await;
    // Every token request, granted or refused, is audited (DICOM User Authentication / Login),
    // naming the client the assertion claims; the answer waits for the record.
    if let Some(auditor) = &st.auditor {
        let client = form
            .iter()
            .find(|(k, _)| k == "client_assertion")
            .and_then(|(_, a)| crate::auth::token::peek_claims(a).ok())
            .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string))
            // What a client claims is untrusted: printable and short, or not at all.
            .filter(|c| !c.is_empty() && c.len() <= 256 && !c.chars().any(char::is_control))
            .unwrap_or_else(|| "unknown".into());
        let addr = req.peer_addr().map(|a| a.ip().to_string());
        let seed = crate::audit::AuditSeed::login(&client, addr.as_deref(), &st.engine.base_url);
        if let Err(e) = auditor.record(seed.event(status, vec![])).await {
            return oauth(
                503,
                serde_json::json!({"error": "temporarily_unavailable", "error_description": e.to_string()}),
            );
        }
    }
    oauth(status, answer)
}

/// The token endpoint's answer (status, OAuth JSON) and the form it read.
async fn token_answer(
    req: &HttpRequest,
    payload: web::Payload,
    st: &AppState,
) -> (u16, Value, Vec<(String, String)>) {
    let refuse =
        |why: String| serde_json::json!({"error": "invalid_request", "error_description": why});
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        let why = "the token request must be application/x-www-form-urlencoded";
        return (400, refuse(why.into()), vec![]);
    }
    let body = match read_body(req, payload, 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return (400, refuse(e.to_string()), vec![]),
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    match st.auth.server.token(&st.engine.store, &form).await {
        Ok(answer) => (200, answer, form),
        Err(e) => {
            tracing::info!(error = e.error, description = %e.description, "token request refused");
            (e.status, e.body(), form)
        }
    }
}

pub async fn read(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    let stored = st.engine.read(&caller.0, &ty, &id).await?;
    note(&req, &st, || {
        crate::audit::written_entities(&stored, &st.engine.base_url)
    });
    send_stored(&req, out, stored)
}

pub async fn vread(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id, vid) = path.into_inner();
    let stored = st.engine.vread(&caller.0, &ty, &id, &vid).await?;
    note(&req, &st, || {
        crate::audit::written_entities(&stored, &st.engine.base_url)
    });
    send_stored(&req, out, stored)
}

/// `GET [type]/[id]/$diff?from=v1[&to=v2]`: how version v1 became v2 (default: the current
/// version), as a JSON Patch document.
pub async fn diff(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let (ty, id) = path.into_inner();
    let params = query_params(&req);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let from = param("from").ok_or_else(|| {
        FhirError::invalid("$diff needs from=<versionId> (and optionally to=)", "from")
    })?;
    let to = param("to");
    let (older, newer, patch) = st
        .engine
        .diff(&caller.0, &ty, &id, &from, to.as_deref())
        .await?;
    note(&req, &st, || {
        let mut e = crate::audit::written_entities(&older, &st.engine.base_url);
        e.extend(crate::audit::written_entities(&newer, &st.engine.base_url));
        e
    });
    let mut b = HttpResponse::Ok();
    version_headers(&mut b, &newer);
    Ok(b.content_type("application/json-patch+json")
        .body(patch.to_string()))
}

/// `GET Patient/[id]/$everything`: the patient's record, as far as the caller may read it.
pub async fn patient_everything(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let id = path.into_inner();
    let params = query_params(&req);
    let bundle = st
        .engine
        .patient_everything(&caller.0, &id, &params)
        .await?;
    note(&req, &st, || {
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().filter(|(k, _)| k != "access_token"))
            .finish();
        let query = format!("Patient/{id}/$everything?{qs}");
        vec![
            crate::audit::query_entity(query.trim_end_matches('?')),
            crate::audit::patient_entity(&id),
        ]
    });
    send_value(HttpResponse::Ok(), out, &bundle)
}

/// `GET CarePlan/[id]/$everything`: the plan package.
pub async fn careplan_everything(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let id = path.into_inner();
    let bundle = st.engine.careplan_everything(&caller.0, &id).await?;
    note(&req, &st, || {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let r = &e["resource"];
                Some(crate::audit::resource_entity(&format!(
                    "{}/{}",
                    r["resourceType"].as_str()?,
                    r["id"].as_str()?
                )))
            })
            .collect()
    });
    send_value(HttpResponse::Ok(), out, &bundle)
}

/// Tells the audit middleware what a handler touched.
fn note(req: &HttpRequest, st: &AppState, entities: impl FnOnce() -> Vec<crate::audit::Entity>) {
    if st.auditor.is_some() {
        req.extensions_mut().insert(AuditNote {
            entities: entities(),
            recorded: false,
            interaction: None,
        });
    }
}

/// Tells the audit middleware the interaction's AuditEvent was stored with its write.
fn recorded(req: &HttpRequest) {
    req.extensions_mut().insert(AuditNote {
        entities: vec![],
        recorded: true,
        interaction: None,
    });
}

fn send_stored(req: &HttpRequest, out: Output, stored: Stored) -> Reply {
    let mut b = HttpResponse::Ok();
    version_headers(&mut b, &stored);
    if not_modified(req, stored.version, stored.last_updated) {
        b.status(StatusCode::NOT_MODIFIED);
        return Ok(b.finish());
    }
    send_json_text(b, out, stored.content.as_deref().unwrap_or("{}"))
}

async fn parse_body(req: &HttpRequest, payload: web::Payload, st: &AppState) -> FhirResult<Value> {
    let format = body_format(req)?;
    let body = read_body(req, payload, st.max_body_size).await?;
    parse_resource(&body, format)
}

pub async fn create(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let ty = path.into_inner();
    ensure_type(&ty)?;
    let if_none_exist = header_text(&req, "If-None-Exist")?;
    let resource = parse_body(&req, payload, &st).await?;
    let seed = st.audit_seed(&req, &caller.0);
    let written = st
        .engine
        .create(&caller.0, seed.as_ref(), &ty, resource, if_none_exist)
        .await?;
    recorded(&req);
    send_written(&req, out, &st, written)
}

/// A header's text, if sent (400 when it is not readable text).
fn header_text(req: &HttpRequest, name: &str) -> FhirResult<Option<String>> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_string())
                .map_err(|_| FhirError::BadRequest(format!("{name} is not readable")))
        })
        .transpose()
}

/// The query string of a conditional interaction (`PUT/DELETE [type]?search`); 412 without one,
/// since a condition that names nothing would match everything.
fn condition(req: &HttpRequest) -> FhirResult<String> {
    let qs = req.query_string();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(qs.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "_cascade")
        .collect();
    if pairs.is_empty() {
        return Err(FhirError::PreconditionFailed(format!(
            "{} on {} needs search parameters naming what to change",
            req.method(),
            req.path()
        )));
    }
    Ok(url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish())
}

/// `_cascade=delete` on a delete.
fn cascade(req: &HttpRequest) -> FhirResult<bool> {
    match url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "_cascade")
        .map(|(_, v)| v.into_owned())
    {
        None => Ok(false),
        Some(v) if v == "delete" => Ok(true),
        Some(v) => Err(FhirError::invalid(
            format!("_cascade takes 'delete', not '{v}'"),
            "_cascade",
        )),
    }
}

/// `PUT [type]?search`: conditional update.
pub async fn conditional_update(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let ty = path.into_inner();
    ensure_type(&ty)?;
    let cond = condition(&req)?;
    let resource = parse_body(&req, payload, &st).await?;
    let seed = st.audit_seed(&req, &caller.0);
    let written = st
        .engine
        .conditional_update(&caller.0, seed.as_ref(), &ty, &cond, resource)
        .await?;
    recorded(&req);
    send_written(&req, out, &st, written)
}

/// `DELETE [type]?search`: conditional delete (one match, or several up to the configured cap).
pub async fn conditional_delete(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let ty = path.into_inner();
    ensure_type(&ty)?;
    let cond = condition(&req)?;
    let seed = st.audit_seed(&req, &caller.0);
    let n = st
        .engine
        .conditional_delete(&caller.0, seed.as_ref(), &ty, &cond, cascade(&req)?)
        .await?;
    recorded(&req);
    if prefer_return(&req) == Return::OperationOutcome {
        let msg = format!("{n} {ty} resource(s) matching '{cond}' deleted");
        return send_value(HttpResponse::Ok(), out, &information_outcome(&msg));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `PATCH [type]/[id]`: JSON Patch (`application/json-patch+json`) or FHIRPath Patch (a
/// Parameters resource in FHIR JSON or XML).
pub async fn patch(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    ensure_type(&ty)?;
    let pinned = if_match(&req)?;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let patch = if ct.starts_with("application/json-patch+json") {
        let body = read_body(&req, payload, st.max_body_size).await?;
        Patch::json(&fhir::parse_json_body(&body, Format::Json)?)?
    } else {
        let format = body_format(&req)?;
        let body = read_body(&req, payload, st.max_body_size).await?;
        Patch::fhirpath(&parse_resource(&body, format)?)?
    };
    let seed = st.audit_seed(&req, &caller.0);
    let written = st
        .engine
        .patch(&caller.0, seed.as_ref(), &ty, &id, patch, pinned)
        .await?;
    recorded(&req);
    send_written(&req, out, &st, written)
}

/// `POST [base]`: a transaction or batch Bundle.
pub async fn bundle(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let format = body_format(&req)?;
    let body = read_body(&req, payload, st.max_body_size).await?;
    let bundle = fhir::parse_json_body(&body, format)?;
    if st.auditor.is_some() && bundle.get("type").and_then(Value::as_str) == Some("batch") {
        req.extensions_mut().insert(AuditNote {
            interaction: Some(crate::audit::Interaction::Batch),
            ..Default::default()
        });
    }
    let seed = st.audit_seed(&req, &caller.0);
    let answer = st
        .engine
        .process_bundle(&caller.0, seed.as_ref(), bundle)
        .await?;
    if answer["type"] == "transaction-response" {
        recorded(&req);
    }
    send_value(HttpResponse::Ok(), out, &answer)
}

pub async fn update(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    ensure_type(&ty)?;
    let pinned = if_match(&req)?;
    let resource = parse_body(&req, payload, &st).await?;
    let seed = st.audit_seed(&req, &caller.0);
    let written = st
        .engine
        .update(&caller.0, seed.as_ref(), &ty, &id, resource, pinned)
        .await?;
    recorded(&req);
    send_written(&req, out, &st, written)
}

fn send_written(req: &HttpRequest, out: Output, st: &AppState, w: Written) -> Reply {
    let mut b = if w.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    version_headers(&mut b, &w.stored);
    b.insert_header((header::LOCATION, w.stored.location(&st.engine.base_url)));
    match prefer_return(req) {
        Return::Minimal => Ok(b.finish()),
        Return::OperationOutcome => {
            let verb = if w.created { "created" } else { "updated" };
            let msg = format!(
                "{}/{} {verb} as version {}",
                w.stored.resource_type, w.stored.id, w.stored.version
            );
            send_value(b, out, &information_outcome(&msg))
        }
        Return::Representation => {
            send_json_text(b, out, w.stored.content.as_deref().unwrap_or("{}"))
        }
    }
}

pub async fn delete(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    let pinned = if_match(&req)?;
    let seed = st.audit_seed(&req, &caller.0);
    let deleted = st
        .engine
        .delete(&caller.0, seed.as_ref(), &ty, &id, pinned, cascade(&req)?)
        .await?;
    recorded(&req);
    let mut b = HttpResponse::NoContent();
    if let Some(w) = &deleted {
        version_headers(&mut b, &w.stored);
    }
    if prefer_return(&req) == Return::OperationOutcome {
        let msg = match &deleted {
            Some(w) => format!("{ty}/{id} deleted (version {})", w.stored.version),
            None => format!("{ty}/{id} did not exist or was already deleted; nothing changed"),
        };
        b.status(StatusCode::OK);
        return send_value(b, out, &information_outcome(&msg));
    }
    Ok(b.finish())
}

async fn history(
    req: HttpRequest,
    caller: Caller,
    st: web::Data<AppState>,
    level: HistoryLevel,
) -> Reply {
    let out = negotiate(&req)?;
    let bundle = st
        .engine
        .history(&caller.0, level, &query_params(&req))
        .await?;
    send_value(HttpResponse::Ok(), out, &bundle)
}

pub async fn history_system(req: HttpRequest, caller: Caller, st: web::Data<AppState>) -> Reply {
    history(req, caller, st, HistoryLevel::System).await
}

pub async fn history_type(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    history(req, caller, st, HistoryLevel::Type(path.into_inner())).await
}

pub async fn history_instance(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let (ty, id) = path.into_inner();
    history(req, caller, st, HistoryLevel::Instance(ty, id)).await
}

async fn search(
    req: &HttpRequest,
    caller: &Caller,
    st: &AppState,
    scope: SearchScope,
    params: Vec<(String, String)>,
) -> Reply {
    let out = negotiate(req)?;
    let ty = match &scope {
        SearchScope::Type(t) => Some(t.clone()),
        SearchScope::Compartment { target_type, .. } => Some(target_type.clone()),
        SearchScope::System => None,
    };
    let bundle = st
        .engine
        .search(&caller.0, scope, &params, prefer_strict(req))
        .await?;
    note(req, st, || {
        let path = req
            .path()
            .trim_start_matches("/fhir")
            .trim_start_matches('/');
        let path = path.trim_end_matches("/_search");
        // Never a credential in the trail, even one sent where it does not belong.
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().filter(|(k, _)| k != "access_token"))
            .finish();
        let query = if qs.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{qs}")
        };
        crate::audit::search_entities(&query, &params, ty.as_deref())
    });
    send_value(HttpResponse::Ok(), out, &bundle)
}

pub async fn search_type(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let params = query_params(&req);
    let scope = SearchScope::Type(path.into_inner());
    search(&req, &caller, &st, scope, params).await
}

/// `POST [type]/_search` (or `POST [base]/_search`): parameters in a form body, plus the URL's.
pub async fn search_post(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-www-form-urlencoded");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(FhirError::UnsupportedMediaType(format!(
            "POST _search takes application/x-www-form-urlencoded, not '{ct}'"
        )));
    }
    let body = read_body(&req, payload, st.max_body_size).await?;
    let mut params = query_params(&req);
    params.extend(url::form_urlencoded::parse(&body).into_owned());
    let scope = match req.match_info().get("type") {
        Some(t) => SearchScope::Type(t.to_string()),
        None => SearchScope::System,
    };
    search(&req, &caller, &st, scope, params).await
}

pub async fn search_system(req: HttpRequest, caller: Caller, st: web::Data<AppState>) -> Reply {
    let params = query_params(&req);
    search(&req, &caller, &st, SearchScope::System, params).await
}

pub async fn search_compartment(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let (comp_type, id, target_type) = path.into_inner();
    ensure_type(&comp_type)?;
    let params = query_params(&req);
    let scope = SearchScope::Compartment {
        comp_type,
        id,
        target_type,
    };
    search(&req, &caller, &st, scope, params).await
}

/// A known path with a method it does not serve: 405, or 404 if the type itself is unknown.
pub async fn method_not_allowed(req: HttpRequest) -> Reply {
    let first = req
        .match_info()
        .get("type")
        .map(str::to_string)
        .unwrap_or_default();
    if !first.is_empty() {
        ensure_type(&first)?;
    }
    Err(FhirError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

pub async fn not_found(req: HttpRequest) -> Reply {
    Err(FhirError::NotFound(format!(
        "nothing is served at {}",
        req.path()
    )))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/health+json")
        .body(r#"{"status":"pass"}"#)
}

pub async fn readyz(st: web::Data<AppState>) -> Reply {
    st.engine.store.ping().await?;
    Ok(HttpResponse::Ok()
        .content_type("application/health+json")
        .body(r#"{"status":"pass"}"#))
}

/// `POST QuestionnaireResponse/$extract` (SDC): the body is a Parameters with a
/// `questionnaire-response`, or the response itself; the answer is a transaction Bundle of the
/// Observations it stands for. Nothing is stored.
pub async fn extract(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let body = parse_body(&req, payload, &st).await?;
    let response = match body["resourceType"].as_str() {
        Some("Parameters") => body["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "questionnaire-response")
            .map(|p| p["resource"].clone())
            .filter(Value::is_object)
            .ok_or_else(|| {
                FhirError::invalid(
                    "$extract needs a 'questionnaire-response' parameter holding the response",
                    "Parameters.parameter",
                )
            })?,
        _ => body,
    };
    let bundle = st.engine.extract(&caller.0, response.clone()).await?;
    note(&req, &st, || {
        let mut e = vec![crate::audit::query_entity("QuestionnaireResponse/$extract")];
        if let Some(p) = response["subject"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Patient/"))
        {
            e.push(crate::audit::patient_entity(p));
        }
        e
    });
    send_value(HttpResponse::Ok(), out, &bundle)
}

/// `[GET|POST] QuestionnaireResponse/[id]/$extract`: `$extract` of a stored response.
pub async fn extract_instance(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let id = path.into_inner();
    let stored = st
        .engine
        .read(&caller.0, "QuestionnaireResponse", &id)
        .await?;
    let bundle = st.engine.extract(&caller.0, stored.json()?).await?;
    note(&req, &st, || {
        crate::audit::written_entities(&stored, &st.engine.base_url)
    });
    send_value(HttpResponse::Ok(), out, &bundle)
}

/// `GET CarePlan/[id]/$progress`: for each goal of the plan, its measure, baseline, latest value,
/// trend and status, as Parameters; with `Accept: image/svg+xml`, a chart of the scores over time
/// with the severity bands and the goal targets.
pub async fn progress(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let wants_svg = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|m| m.trim().starts_with("image/svg+xml")))
        || query_params(&req)
            .iter()
            .any(|(k, v)| k == "_format" && v == "image/svg+xml");
    let out = if wants_svg {
        None
    } else {
        Some(negotiate(&req)?)
    };
    let id = path.into_inner();
    let (plan, goals, measures) = st.engine.progress(&caller.0, &id).await?;
    note(&req, &st, || {
        let mut e = crate::audit::written_entities(&plan, &st.engine.base_url);
        e.extend(goals.iter().map(|g| {
            crate::audit::resource_entity(&format!("Goal/{}/_history/{}", g.id, g.version))
        }));
        e
    });
    match out {
        None => Ok(HttpResponse::Ok()
            .content_type("image/svg+xml")
            .body(crate::care::progress::svg(&measures))),
        Some(out) => send_value(
            HttpResponse::Ok(),
            out,
            &crate::care::progress::parameters(&measures),
        ),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    let (in_use, idle, max) = st.engine.store.pool_state();
    for (state, n) in [("in_use", in_use), ("idle", idle), ("max", max)] {
        crate::metrics::POOL
            .with_label_values(&[state])
            .set(n as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

/// `GET /openapi.json`: the OpenAPI 3.1 description of this server.
pub async fn openapi() -> HttpResponse {
    static DOC: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| super::openapi::document().to_string());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOC.as_str())
}
