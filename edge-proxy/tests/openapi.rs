//! edge-proxy/openapi.json lists exactly the calls `Call::parse` accepts: every documented
//! operation is a call with its method (and only with it), every call the parser accepts
//! among a set of paths built from the API's segments is documented, and the document's
//! references resolve. edge-proxy/tests/schemathesis/run fuzzes a live edge against it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge_proxy::api::Call;
use std::collections::BTreeSet;

use http::Method;
use serde_json::Value;
use testkit::openapi::{METHODS, check_document, operations as documented};

const DOCUMENT: &str = include_str!("../openapi.json");
const ID: &str = "eu-west.0123456789abcdef0123456789abcdef";

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON")
}

/// A concrete path for `template`: each parameter filled with a value of its shape.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|part| match part {
            "{id}" => ID,
            p if p.starts_with('{') => "x1",
            p => p,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `path` is an instance of `template`.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t.starts_with('{') && !p.is_empty() || t == p)
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.to_uppercase().as_bytes()).unwrap()
}

#[test]
fn every_documented_operation_is_a_call_with_its_method_only() {
    let documented = documented(&document());
    assert!(!documented.is_empty());
    for (name, template) in &documented {
        let path = concrete(template);
        assert!(
            Call::parse(&method(name), &path).is_ok(),
            "{name} {template} is documented but {path} is not a call"
        );
        for other in METHODS.iter().filter(|m| **m != name.as_str()) {
            if documented.contains(&((*other).to_owned(), template.clone())) {
                continue;
            }
            let err = Call::parse(&method(other), &path).expect_err(other);
            assert_eq!(err.status, 405, "{other} {path}");
        }
    }
}

/// Every literal word of the documented paths, a request id and a plain value.
fn words(documented: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    let mut words: BTreeSet<String> = documented
        .iter()
        .flat_map(|(_, template)| template.split('/'))
        .filter(|w| !w.is_empty() && !w.starts_with('{'))
        .map(str::to_owned)
        .collect();
    words.extend([ID.to_owned(), "x1".to_owned()]);
    words
}

/// Whether `path` is the first segments of `template`, its parameters filled with the plain
/// values (a request id or `x1`).
fn starts(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    p.len() <= t.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || t.starts_with('{') && [ID, "x1"].contains(p))
}

#[test]
fn every_call_the_edge_accepts_is_documented() {
    let documented = documented(&document());
    let words = words(&documented);
    // Paths of one to eight segments made of the API's own words and parameter values —
    // every combination up to three segments, and longer ones along documented paths —
    // every one the parser takes must match a documented template with the same method.
    let mut paths = vec![String::new()];
    let mut accepted = 0;
    for depth in 1..=8 {
        let mut longer = Vec::new();
        for path in &paths {
            for word in &words {
                let path = format!("{path}/{word}");
                for name in METHODS {
                    if Call::parse(&method(name), &path).is_ok() {
                        accepted += 1;
                        assert!(
                            documented
                                .iter()
                                .any(|(m, t)| m == name && matches(t, &path)),
                            "{name} {path} is a call but not in openapi.json"
                        );
                    }
                }
                if depth < 3 || documented.iter().any(|(_, t)| starts(t, &path)) {
                    longer.push(path);
                }
            }
        }
        paths = longer;
    }
    // Each documented operation was among them.
    assert!(accepted >= documented.len(), "{accepted} calls accepted");
}

#[test]
fn the_document_is_well_formed() {
    check_document(&document());
}

/// The error body the edge writes is an instance of the documented `Error`: the fields it
/// requires are there, with their types.
#[test]
fn the_documented_error_is_the_body_the_edge_writes() {
    let doc = document();
    let schema = &doc["components"]["schemas"]["Error"];
    let body: Value =
        serde_json::from_slice(&edge_proxy::error::ApiError::not_found("nothing").body()).unwrap();
    for field in schema["required"].as_array().unwrap() {
        assert!(body.get(field.as_str().unwrap()).is_some(), "{field}");
    }
    let inner = &schema["properties"]["error"];
    for field in inner["required"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        assert_eq!(inner["properties"][field]["type"], "string", "{field}");
        assert!(body["error"][field].is_string(), "{field}");
    }
}

/// Each compatible surface's error, as the edge writes it, has the fields its documented
/// envelope requires.
#[test]
fn the_documented_envelopes_are_the_bodies_the_edge_writes() {
    use edge_proxy::error::ApiError;
    use edge_proxy::surface::Surface;

    let doc = document();
    let err = ApiError::unknown_model("acme/nothing");
    for (surface, schema) in [
        (Surface::Fal, "FalError"),
        (Surface::OpenAi, "OpenAiError"),
        (Surface::Replicate, "ReplicateError"),
    ] {
        let schema = &doc["components"]["schemas"][schema];
        let body: Value = serde_json::from_slice(&surface.error_body(&err)).unwrap();
        for field in schema["required"].as_array().unwrap() {
            assert!(
                body.get(field.as_str().unwrap()).is_some(),
                "{surface:?} {field}"
            );
        }
        if let Some(inner) = schema["properties"]["error"]["required"].as_array() {
            for field in inner {
                assert!(
                    body["error"][field.as_str().unwrap()].is_string(),
                    "{field}"
                );
            }
        }
    }
}
