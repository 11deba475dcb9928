//! Content negotiation and the HTTP-level headers of FHIR: `_format`/Accept, Content-Type, `_pretty`,
//! `Prefer: return=…`, ETags and HTTP dates, and request bodies read under a size cap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::error::{FhirError, FhirResult};
use crate::fhir::Format;

/// The query string as name/value pairs, percent-decoded, in order.
pub fn query_params(req: &HttpRequest) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What the response looks like: its format and whether it is pretty-printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: Format,
    pub pretty: bool,
}

fn format_of_mime(mime: &str) -> Option<Format> {
    match mime.trim().to_ascii_lowercase().as_str() {
        "json"
        | "application/fhir+json"
        | "application/json"
        | "application/json+fhir"
        | "text/json"
        | "*/*"
        | "application/*" => Some(Format::Json),
        "xml"
        | "application/fhir+xml"
        | "application/xml"
        | "application/xml+fhir"
        | "text/xml" => Some(Format::Xml),
        _ => None,
    }
}

/// Picks the response format from `_format`, else from Accept (highest q first), else JSON.
pub fn negotiate(req: &HttpRequest) -> FhirResult<Output> {
    let params = query_params(req);
    let pretty = param(&params, "_pretty") == Some("true");
    if let Some(f) = param(&params, "_format") {
        let essence = f.split(';').next().unwrap_or_default();
        return format_of_mime(essence)
            .map(|format| Output { format, pretty })
            .ok_or_else(|| FhirError::NotAcceptable(format!("_format={f} is not supported")));
    }
    let accept = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(Output {
            format: Format::Json,
            pretty,
        });
    }
    let mut ranked: Vec<(f32, &str)> = accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let mime = parts.next()?.trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (q > 0.0).then_some((q, mime))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked
        .iter()
        .find_map(|(_, m)| format_of_mime(m))
        .map(|format| Output { format, pretty })
        .ok_or_else(|| {
            FhirError::NotAcceptable(format!(
                "cannot answer in any of '{accept}'; use application/fhir+json or application/fhir+xml"
            ))
        })
}

/// The format of the request body, from Content-Type (JSON when absent).
pub fn body_format(req: &HttpRequest) -> FhirResult<Format> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence.is_empty() {
        return Ok(Format::Json);
    }
    match format_of_mime(essence) {
        Some(f) if !essence.contains('*') => Ok(f),
        _ => Err(FhirError::UnsupportedMediaType(format!(
            "Content-Type '{ct}' is not supported; send application/fhir+json or application/fhir+xml"
        ))),
    }
}

/// Reads the whole body, refusing with 413 as soon as it is known to exceed `max` bytes.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> FhirResult<web::Bytes> {
    let too_large =
        || FhirError::PayloadTooLarge(format!("the request body exceeds the limit of {max} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| FhirError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `Prefer: return=…` (http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

pub fn prefer_return(req: &HttpRequest) -> Return {
    let prefer = req
        .headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| p.trim().strip_prefix("return=").map(str::trim));
    match prefer {
        Some("minimal") => Return::Minimal,
        Some("OperationOutcome") => Return::OperationOutcome,
        _ => Return::Representation,
    }
}

/// `Prefer: handling=strict`: unknown search parameters are errors instead of being ignored.
pub fn prefer_strict(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim() == "handling=strict")
}

/// The version an `If-Match` header pins, if any.
pub fn if_match(req: &HttpRequest) -> FhirResult<Option<i64>> {
    req.headers()
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map_err(|_| FhirError::BadRequest("If-Match is not readable".into()))
                .and_then(crate::rest::parse_etag)
        })
        .transpose()
}

/// Whether a conditional read can answer 304 for this version.
pub fn not_modified(req: &HttpRequest, version: i64, last_updated: i64) -> bool {
    if let Some(inm) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return inm.split(',').any(|tag| {
            tag.trim() == "*" || crate::rest::parse_etag(tag).is_ok_and(|v| v == version)
        });
    }
    if let Some(since) = req
        .headers()
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let since = since
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        return last_updated / 1_000_000 <= since;
    }
    false
}

pub fn http_date(micros: i64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64))
}
