//! The OpenAPI 3.1 description of everything Cairn serves, built from the same data the server
//! runs on: the enabled types, their search parameters, and `ROUTES` (which `fhir_routes` must
//! match: a test sends a request to every documented operation). Resource schemas are the
//! official FHIR R4 JSON schema's, trimmed to the enabled types (`openapi/fhir-r4-schemas.json`,
//! made by `tools/gen_openapi_schemas.py`). Served at `/openapi.json`; `openapi/cairn.yaml` is the
//! same document (JSON is YAML), rewritten by `cairn openapi` and checked by a test.

use serde_json::{json, Map, Value};

use crate::fhir;

const SCHEMAS: &str = include_str!("../../openapi/fhir-r4-schemas.json");

/// An operation on one path: method, summary, and the kind of body and answer.
struct Op {
    method: &'static str,
    id: &'static str,
    summary: &'static str,
    /// The request body: None, "resource" (the type's schema), "Bundle", "Parameters", "patch".
    body: Option<&'static str>,
    /// The answer: "resource", "Bundle", "Parameters", "none", "patch", "svg", "json", "text".
    answer: &'static str,
    /// Status codes besides the success one and the common errors.
    ok: &'static str,
    search: bool,
}

const fn op(
    method: &'static str,
    id: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    answer: &'static str,
    ok: &'static str,
) -> Op {
    Op {
        method,
        id,
        summary,
        body,
        answer,
        ok,
        search: false,
    }
}

/// The interactions on each enabled type, by path under `/fhir/{Type}`.
fn type_routes(writable: bool) -> Vec<(&'static str, Vec<Op>)> {
    let mut search = op("get", "search", "Search", None, "Bundle", "200");
    search.search = true;
    let mut post_search = op(
        "post",
        "search-post",
        "Search (form body)",
        None,
        "Bundle",
        "200",
    );
    post_search.search = true;
    let mut type_ops = vec![search];
    let mut inst = vec![op(
        "get",
        "read",
        "Read the current version",
        None,
        "resource",
        "200",
    )];
    if writable {
        type_ops.push(op(
            "post",
            "create",
            "Create (If-None-Exist for a conditional create)",
            Some("resource"),
            "resource",
            "201",
        ));
        type_ops.push(op(
            "put",
            "conditional-update",
            "Conditional update (the query selects)",
            Some("resource"),
            "resource",
            "200",
        ));
        type_ops.push(op(
            "delete",
            "conditional-delete",
            "Conditional delete (the query selects)",
            None,
            "none",
            "204",
        ));
        inst.push(op(
            "put",
            "update",
            "Update, or create with this id",
            Some("resource"),
            "resource",
            "200",
        ));
        inst.push(op(
            "patch",
            "patch",
            "JSON Patch or FHIRPath Patch",
            Some("patch"),
            "resource",
            "200",
        ));
        inst.push(op(
            "delete",
            "delete",
            "Delete (?_cascade=delete deletes what refers to it first)",
            None,
            "none",
            "204",
        ));
    } else {
        type_ops.push(op(
            "post",
            "create",
            "Refused: the server writes these",
            Some("resource"),
            "resource",
            "405",
        ));
        inst.push(op(
            "put",
            "update",
            "Refused: append-only",
            Some("resource"),
            "resource",
            "405",
        ));
        inst.push(op(
            "delete",
            "delete",
            "Refused: append-only",
            None,
            "none",
            "405",
        ));
    }
    vec![
        ("", type_ops),
        ("/_search", vec![post_search]),
        (
            "/_history",
            vec![op(
                "get",
                "history-type",
                "History of the type",
                None,
                "Bundle",
                "200",
            )],
        ),
        ("/{id}", inst),
        (
            "/{id}/_history",
            vec![op(
                "get",
                "history-instance",
                "History of the resource",
                None,
                "Bundle",
                "200",
            )],
        ),
        (
            "/{id}/_history/{vid}",
            vec![op(
                "get",
                "vread",
                "Read one version",
                None,
                "resource",
                "200",
            )],
        ),
        (
            "/{id}/$diff",
            vec![op(
                "get",
                "diff",
                "JSON Patch from version `from` to `to` (default: current)",
                None,
                "patch",
                "200",
            )],
        ),
    ]
}

/// The routes outside the per-type ones, by full path.
fn other_routes() -> Vec<(&'static str, bool, Vec<Op>)> {
    // (path, needs a token, operations)
    vec![
        ("/healthz", false, vec![op("get", "healthz", "Liveness", None, "health", "200")]),
        ("/readyz", false, vec![op("get", "readyz", "Readiness: the database answers", None, "health", "200")]),
        ("/metrics", false, vec![op("get", "metrics", "Prometheus metrics", None, "text", "200")]),
        ("/openapi.json", false, vec![op("get", "openapi", "This document", None, "json", "200")]),
        ("/.well-known/smart-configuration", false, vec![op("get", "smart-configuration-root", "SMART discovery", None, "json", "200")]),
        ("/fhir/.well-known/smart-configuration", false, vec![op("get", "smart-configuration", "SMART discovery", None, "json", "200")]),
        ("/auth/jwks", false, vec![op("get", "jwks", "The server's public signing keys", None, "jwks", "200")]),
        ("/auth/token", false, vec![op("post", "token", "OAuth 2.0 token endpoint (SMART Backend Services: client_credentials with a client assertion)", None, "json", "200")]),
        ("/fhir/metadata", false, vec![op("get", "capabilities", "CapabilityStatement", None, "resource:CapabilityStatement", "200")]),
        ("/fhir", true, vec![
            op("post", "transaction", "Transaction or batch Bundle", Some("Bundle"), "Bundle", "200"),
            {
                let mut s = op("get", "search-system", "Search across types (_type)", None, "Bundle", "200");
                s.search = true;
                s
            },
        ]),
        ("/fhir/_search", true, vec![op("post", "search-system-post", "Search across types (form body)", None, "Bundle", "200")]),
        ("/fhir/_history", true, vec![op("get", "history-system", "History of everything", None, "Bundle", "200")]),
        ("/fhir/Patient/{id}/$everything", true, vec![op("get", "patient-everything", "The patient's compartment (_type, _since, _count)", None, "Bundle", "200")]),
        ("/fhir/Patient/{id}/{type}", true, vec![op("get", "search-compartment", "Search within the patient's compartment", None, "Bundle", "200")]),
        ("/fhir/CarePlan/{id}/$everything", true, vec![op("get", "careplan-everything", "The plan package", None, "Bundle", "200")]),
        ("/fhir/CarePlan/{id}/$progress", true, vec![op("get", "careplan-progress", "Goal progress: Parameters, or an SVG chart (Accept: image/svg+xml)", None, "progress", "200")]),
        ("/fhir/QuestionnaireResponse/$extract", true, vec![op("post", "extract", "SDC observation-based extraction (nothing is stored)", Some("Parameters"), "Bundle", "200")]),
        ("/fhir/QuestionnaireResponse/{id}/$extract", true, vec![
            op("get", "extract-instance", "SDC extraction of a stored response", None, "Bundle", "200"),
            op("post", "extract-instance-post", "SDC extraction of a stored response", None, "Bundle", "200"),
        ]),
    ]
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn fhir_content(schema: Value) -> Value {
    json!({"application/fhir+json": {"schema": schema}, "application/fhir+xml": {"schema": {"type": "string"}}})
}

fn param_schema(kind: &str) -> Value {
    match kind {
        "number" => json!({"type": "string", "pattern": "^(eq|ne|gt|lt|ge|le|sa|eb|ap)?-?[0-9]"}),
        _ => json!({"type": "string"}),
    }
}

/// The responses of an operation: its success and the errors every FHIR operation may give.
fn responses(o: &Op, ty: Option<&str>) -> Value {
    let mut r = Map::new();
    let ok = o.ok.parse::<u16>().unwrap_or(200);
    let body = match o.answer {
        "resource" => ty.map(|t| fhir_content(schema_ref(t))),
        a if a.starts_with("resource:") => Some(fhir_content(schema_ref(&a[9..]))),
        "Bundle" | "Parameters" => Some(fhir_content(schema_ref(o.answer))),
        "progress" => Some(
            json!({"application/fhir+json": {"schema": schema_ref("Parameters")},
            "image/svg+xml": {"schema": {"type": "string"}}}),
        ),
        "patch" => Some(
            json!({"application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}}}),
        ),
        "json" => Some(json!({"application/json": {"schema": {"type": "object"}}})),
        "health" => Some(json!({"application/health+json": {"schema": {"type": "object"}}})),
        "jwks" => Some(json!({"application/jwk-set+json": {"schema": {"type": "object"}}})),
        "text" => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
        _ => None,
    };
    if ok == 405 {
        r.insert(
            "405".into(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    } else {
        let mut success = json!({"description": "Success"});
        if let Some(b) = body.clone() {
            success["content"] = b;
        }
        r.insert(ok.to_string(), success);
        // A create or update may also answer 200 (an existing match) or 201 (created).
        if o.body == Some("resource") {
            let mut other = json!({"description": "Success"});
            if let Some(b) = body {
                other["content"] = b;
            }
            r.insert(if ok == 201 { "200" } else { "201" }.into(), other);
        }
        if o.method == "get" && (o.answer == "resource") {
            r.insert(
                "304".into(),
                json!({"description": "Not modified (If-None-Match / If-Modified-Since)"}),
            );
        }
    }
    if o.id == "token" {
        // RFC 6749 section 5.2: the token endpoint's errors are OAuth's, not OperationOutcomes.
        for code in ["400", "401"] {
            r.insert(
                code.into(),
                json!({"description": "An OAuth 2.0 error",
                "content": {"application/json": {"schema": {"type": "object",
                    "required": ["error"], "properties": {"error": {"type": "string"},
                    "error_description": {"type": "string"}}}}}}),
            );
        }
    }
    for code in [
        "400", "401", "403", "404", "405", "406", "409", "410", "412", "413", "415", "422", "429",
        "500", "503",
    ] {
        r.entry(code)
            .or_insert_with(|| json!({"$ref": "#/components/responses/Error"}));
    }
    Value::Object(r)
}

fn operation(o: &Op, ty: Option<&str>, path_params: &[&str], secured: bool) -> Value {
    let mut x = json!({
        "operationId": match ty { Some(t) => format!("{t}-{}", o.id), None => o.id.to_string() },
        "summary": o.summary,
        "responses": responses(o, ty),
    });
    if let Some(t) = ty {
        x["tags"] = json!([t]);
    }
    let mut params: Vec<Value> = path_params
        .iter()
        .map(|p| {
            json!({"name": p, "in": "path", "required": true,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}})
        })
        .collect();
    params.push(json!({"$ref": "#/components/parameters/_format"}));
    if o.search {
        for name in [
            "_count",
            "_sort",
            "_include",
            "_revinclude",
            "_summary",
            "_elements",
            "_total",
        ] {
            params.push(json!({"$ref": format!("#/components/parameters/{name}")}));
        }
        if let Some(defs) = ty.and_then(|t| crate::search::registry().params(t)) {
            for (code, p) in defs {
                params.push(json!({"name": code, "in": "query", "required": false,
                    "description": format!("{} search parameter ({})", p.kind.as_str(), p.url),
                    "schema": param_schema(p.kind.as_str())}));
            }
        }
    }
    x["parameters"] = json!(params);
    match o.body {
        Some("resource") => {
            x["requestBody"] = json!({"required": true,
                "content": fhir_content(schema_ref(ty.unwrap_or("ResourceList")))})
        }
        Some("patch") => {
            x["requestBody"] = json!({"required": true, "content": {
                "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/fhir+json": {"schema": schema_ref("Parameters")}}})
        }
        Some(kind) => {
            let mut content = fhir_content(schema_ref(kind));
            if o.id == "extract" {
                content["application/fhir+json"]["schema"] = json!({"oneOf": [
                    schema_ref("Parameters"), schema_ref("QuestionnaireResponse")]});
            }
            x["requestBody"] = json!({"required": true, "content": content});
        }
        None => {}
    }
    if o.id == "token" {
        x["requestBody"] = json!({"required": true, "content": {"application/x-www-form-urlencoded":
            {"schema": {"type": "object", "properties": {"grant_type": {"type": "string"},
            "scope": {"type": "string"}, "client_assertion_type": {"type": "string"},
            "client_assertion": {"type": "string"}}}}}});
    }
    if !secured {
        x["security"] = json!([]);
    }
    x
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (path, secured, ops) in other_routes() {
        let params = path_params(path);
        let mut item = Map::new();
        for o in &ops {
            item.insert(o.method.into(), operation(o, None, &params, secured));
        }
        paths.insert(path.into(), Value::Object(item));
    }
    for ty in fhir::ENABLED_TYPES {
        for (suffix, ops) in type_routes(!fhir::is_server_written(ty)) {
            let path = format!("/fhir/{ty}{suffix}");
            let params = path_params(&path);
            let entry = paths.entry(path.clone()).or_insert_with(|| json!({}));
            for o in &ops {
                entry[o.method] = operation(o, Some(ty), &params, true);
            }
        }
    }
    let schemas: Value =
        serde_json::from_str(SCHEMAS).expect("openapi/fhir-r4-schemas.json is JSON");
    let query = |name: &str, d: &str| {
        json!({"name": name, "in": "query", "required": false,
        "description": d, "schema": {"type": "string"}})
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Cairn FHIR R4 server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "FHIR R4 (4.0.1) REST API for personalized care plans. Bodies are FHIR JSON \
                or XML; every error is an OperationOutcome. Every /fhir path except metadata and the SMART \
                discovery document needs a SMART on FHIR Bearer token (401 without a valid one, 403 when \
                its scopes do not allow the request; 429 over the per-client rate limit).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "servers": [{"url": "/"}],
        "security": [{"smart": []}],
        "tags": fhir::ENABLED_TYPES.iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "smart": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A SMART on FHIR access token (scopes such as patient/*.rs, user/Observation.cruds, system/*.rs)"}
            },
            "parameters": {
                "_format": query("_format", "json, xml, application/fhir+json or application/fhir+xml (overrides Accept)"),
                "_count": query("_count", "Page size (capped at the server's maximum)"),
                "_sort": query("_sort", "Sort keys, comma-separated, '-' for descending"),
                "_include": query("_include", "Type:param[:target] to include"),
                "_revinclude": query("_revinclude", "Type:param[:target] to include in reverse"),
                "_summary": query("_summary", "true, text, data, count or false"),
                "_elements": query("_elements", "Elements to return, comma-separated"),
                "_total": query("_total", "none, estimate or accurate"),
            },
            "responses": {
                "Error": {"description": "An OperationOutcome saying what went wrong",
                    "content": fhir_content(schema_ref("OperationOutcome"))}
            },
            "schemas": schemas,
        }
    })
}

/// The document as `openapi/cairn.yaml` holds it (JSON is YAML 1.2).
pub fn yaml() -> String {
    let mut out = String::from(
        "# Cairn's OpenAPI 3.1 description, generated by `cairn openapi` from the routes and the\n\
         # enabled types (a test checks it is current). JSON is YAML: any YAML tool reads it.\n",
    );
    out.push_str(&serde_json::to_string_pretty(&document()).unwrap_or_default());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    /// The checked-in document is the one the server serves.
    #[test]
    fn checked_in_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/cairn.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text == super::yaml(),
            "openapi/cairn.yaml is out of date: run `cargo run -- openapi > openapi/cairn.yaml`"
        );
    }
}
