//! Reading an OpenAPI 3 document in tests: its operations, and the checks every document
//! must pass (each operation answers something and declares its path parameters; every
//! local reference resolves).

use std::collections::BTreeSet;

use serde_json::Value;

/// The HTTP methods a path item may hold.
pub const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `(method, path template)` of every operation in `doc`.
///
/// # Panics
///
/// When `doc` has no `paths`, or a path item holds something other than an operation.
pub fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            operations.insert((method.clone(), path.clone()));
        }
    }
    operations
}

/// Checks that `doc` is OpenAPI 3, that each operation documents an answer and declares
/// each of its path parameters, and that every `$ref` points inside the document.
///
/// # Panics
///
/// At the first rule broken, naming the operation or the reference.
pub fn check_document(doc: &Value) {
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "openapi {version}");
    for (method, path) in operations(doc) {
        let op = &doc["paths"][&path][&method];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} documents no answer"
        );
        for param in path.split('/').filter(|p| p.starts_with('{')) {
            let name = param.trim_matches(|c| c == '{' || c == '}');
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "path" && p["name"] == name);
            assert!(
                declared,
                "{method} {path} does not declare path parameter {name}"
            );
        }
    }
    let mut found = Vec::new();
    references(doc, &mut found);
    assert!(!found.is_empty(), "the document has no references");
    for target in found {
        let pointer = target.strip_prefix('#').expect("a local reference");
        assert!(
            doc.pointer(pointer).is_some(),
            "dangling reference {target}"
        );
    }
}

fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target);
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}
