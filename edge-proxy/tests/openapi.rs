//! edge-proxy/openapi.json lists exactly the calls `Call::parse` accepts: every documented
//! operation is a call with its method (and only with it), every call the parser accepts
//! among a set of paths built from the API's segments is documented, and the document's
//! references resolve. edge-proxy/tests/schemathesis/run fuzzes a live edge against it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use edge_proxy::api::Call;
use http::Method;
use serde_json::Value;

const DOCUMENT: &str = include_str!("../openapi.json");
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];
const ID: &str = "eu-west.0123456789abcdef0123456789abcdef";

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON")
}

/// `(method, path template)` of every documented operation.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            operations.insert((method.clone(), path.clone()));
        }
    }
    operations
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

fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target);
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[test]
fn every_documented_operation_is_a_call_with_its_method_only() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "openapi {version}");
    let documented = documented(&doc);
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
        let op = &doc["paths"][template][name];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{name} {template} documents no answer"
        );
        for param in template.split('/').filter(|p| p.starts_with('{')) {
            let param = param.trim_matches(|c| c == '{' || c == '}');
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "path" && p["name"] == param);
            assert!(declared, "{name} {template} does not declare {param}");
        }
    }
}

#[test]
fn every_call_the_edge_accepts_is_documented() {
    let documented = documented(&document());
    // Paths of one to six segments made of the API's own words and parameter values: every
    // one the parser takes must match a documented template with the same method.
    let words = [
        "v1", "models", "run", "queue", "requests", ID, "status", "cancel", "files", "x1",
    ];
    let mut paths = vec![String::new()];
    let mut accepted = 0;
    for _ in 0..6 {
        let mut longer = Vec::new();
        for path in &paths {
            for word in words {
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
                longer.push(path);
            }
        }
        paths = longer;
    }
    // Each documented operation was among them.
    assert!(accepted >= documented.len(), "{accepted} calls accepted");
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target.strip_prefix('#').expect("a local reference");
        assert!(
            doc.pointer(pointer).is_some(),
            "dangling reference {target}"
        );
    }
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
