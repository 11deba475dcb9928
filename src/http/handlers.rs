//! One thin handler per FHIR interaction: translate the request, call `rest::Engine`, translate the
//! answer. All FHIR behaviour lives in `rest`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use serde_json::Value;

use super::negotiate::{
    body_format, http_date, if_match, negotiate, not_modified, prefer_return, prefer_strict,
    query_params, read_body, Output, Return,
};
use super::AppState;
use crate::error::{information_outcome, FhirError, FhirResult};
use crate::fhir::{self, parse_resource, Format};
use crate::rest::{capability_statement, ensure_type, HistoryLevel, SearchScope, Stored, Written};

type Reply = Result<HttpResponse, FhirError>;

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
        &capability_statement(&st.engine.base_url),
    )
}

pub async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    let stored = st.engine.read(&ty, &id).await?;
    send_stored(&req, out, stored)
}

pub async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id, vid) = path.into_inner();
    let stored = st.engine.vread(&ty, &id, &vid).await?;
    send_stored(&req, out, stored)
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
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let ty = path.into_inner();
    ensure_type(&ty)?;
    let resource = parse_body(&req, payload, &st).await?;
    let written = st.engine.create(&ty, resource).await?;
    send_written(&req, out, &st, written)
}

pub async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    ensure_type(&ty)?;
    let pinned = if_match(&req)?;
    let resource = parse_body(&req, payload, &st).await?;
    let written = st.engine.update(&ty, &id, resource, pinned).await?;
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
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let out = negotiate(&req)?;
    let (ty, id) = path.into_inner();
    let pinned = if_match(&req)?;
    let deleted = st.engine.delete(&ty, &id, pinned).await?;
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

async fn history(req: HttpRequest, st: web::Data<AppState>, level: HistoryLevel) -> Reply {
    let out = negotiate(&req)?;
    let bundle = st.engine.history(level, &query_params(&req)).await?;
    send_value(HttpResponse::Ok(), out, &bundle)
}

pub async fn history_system(req: HttpRequest, st: web::Data<AppState>) -> Reply {
    history(req, st, HistoryLevel::System).await
}

pub async fn history_type(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    history(req, st, HistoryLevel::Type(path.into_inner())).await
}

pub async fn history_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    st: web::Data<AppState>,
) -> Reply {
    let (ty, id) = path.into_inner();
    history(req, st, HistoryLevel::Instance(ty, id)).await
}

async fn search(
    req: &HttpRequest,
    st: &AppState,
    scope: SearchScope,
    params: Vec<(String, String)>,
) -> Reply {
    let out = negotiate(req)?;
    let bundle = st.engine.search(scope, &params, prefer_strict(req)).await?;
    send_value(HttpResponse::Ok(), out, &bundle)
}

pub async fn search_type(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Reply {
    let params = query_params(&req);
    search(&req, &st, SearchScope::Type(path.into_inner()), params).await
}

/// `POST [type]/_search` (or `POST [base]/_search`): parameters in a form body, plus the URL's.
pub async fn search_post(
    req: HttpRequest,
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
    search(&req, &st, scope, params).await
}

pub async fn search_system(req: HttpRequest, st: web::Data<AppState>) -> Reply {
    let params = query_params(&req);
    search(&req, &st, SearchScope::System, params).await
}

pub async fn search_compartment(
    req: HttpRequest,
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
    search(&req, &st, scope, params).await
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
