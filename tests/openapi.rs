//! The OpenAPI document against the running server: it is served at /openapi.json, every
//! documented operation is routed (and answers only documented statuses, never a 5xx), and every
//! route of the router is documented.

mod common;

use std::collections::BTreeSet;

use common::TestApp;
use serde_json::Value;

/// Every `(METHOD, path)` the document describes.
fn documented(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn served_document_is_the_generated_one(app: &TestApp) {
    let r = app.send(
        "GET",
        &format!("{}/openapi.json", app.root),
        &[("Authorization", "")],
        None,
    );
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc, cairn::http::openapi::document());
    assert_eq!(doc["openapi"], "3.1.0");
}

/// Each documented operation, called with placeholder values, answers one of its documented
/// statuses: nothing documented is missing from the router, and nothing answers 5xx.
fn every_documented_operation_is_served(app: &TestApp) {
    let doc = cairn::http::openapi::document();
    for (method, path) in documented(&doc) {
        let url = format!(
            "{}{}",
            app.root,
            path.replace("{id}", "no-such-id")
                .replace("{vid}", "1")
                .replace("{type}", "Observation")
        );
        let body: &[u8] = b"{}";
        let headers = [
            ("Content-Type", "application/fhir+json"),
            ("Accept", "application/fhir+json"),
        ];
        let has_body = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
        let r = app.send(&method, &url, &headers, has_body.then_some(body));
        let op = &doc["paths"][&path][method.to_lowercase()];
        let statuses: BTreeSet<String> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.text());
        assert!(
            statuses.contains(&r.status.to_string()),
            "{method} {path} answered {} (documented: {statuses:?}): {}",
            r.status,
            r.text()
        );
    }
}

/// Every path the router serves is in the document (read from the route table's source, so a new
/// route without documentation fails here).
#[test]
fn every_route_is_documented() {
    let doc = cairn::http::openapi::document();
    let paths: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let src = include_str!("../src/http/mod.rs");
    // The routes inside `fhir_routes` are under /fhir; the others are at the root.
    let scope_start = src.find("fn fhir_routes").unwrap();
    let scope_end = scope_start + src[scope_start..].find("\n}\n").unwrap();
    let mut routes = Vec::new();
    for (i, _) in src
        .match_indices("resource(\"")
        .chain(src.match_indices("route(\""))
    {
        let start = src[i..].find('"').unwrap() + i + 1;
        let end = src[start..].find('"').unwrap() + start;
        let in_fhir = (scope_start..scope_end).contains(&i);
        routes.push((src[start..end].to_string(), in_fhir));
    }
    assert!(routes.len() > 10, "{routes:?}");
    for (route, in_fhir) in routes {
        let full: Vec<String> = if !in_fhir {
            vec![route.clone()]
        } else if route.starts_with("/{type}") {
            cairn::fhir::ENABLED_TYPES
                .iter()
                .map(|t| format!("/fhir{}", route.replacen("{type}", t, 1)))
                .collect()
        } else {
            vec![format!("/fhir{route}").trim_end_matches('/').to_string()]
        };
        for p in full {
            // The compartment route is documented for Patient, the one compartment served.
            let p = p.replace("/{id}/{target}", "/{id}/{type}");
            let ok = paths.contains(&p)
                || (p.ends_with("/{id}/{type}") && !p.starts_with("/fhir/Patient/"));
            assert!(ok, "route {route} ({p}) is not in the OpenAPI document");
        }
    }
}

on_both_backends!(
    served_document_is_the_generated_one,
    every_documented_operation_is_served
);
