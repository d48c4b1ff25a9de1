//! The OpenAPI document lists exactly the routes the router serves, is valid JSON with
//! `openapi: 3.x` and internal references that resolve, and is served at `/openapi.json`.

use std::collections::BTreeSet;

use control_plane::api::{openapi, route_table};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use testkit::openapi::{check_document, operations as documented};

use crate::server::{Backend, TestServer};

fn document() -> Value {
    serde_json::from_str(openapi::DOCUMENT).expect("openapi.json is valid JSON")
}

#[test]
fn the_document_lists_exactly_the_routed_endpoints() {
    let doc = document();
    check_document(&doc);
    assert!(doc["info"]["title"].is_string());
    let routed: BTreeSet<(String, String)> = route_table()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_lowercase(), path))
        .collect();
    let documented = documented(&doc);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in openapi.json: {undocumented:?}; in openapi.json but not routed: {unrouted:?}"
    );
}

/// Every documented operation reaches its handler's token check (401 without a token),
/// never the "no such endpoint" or "method not allowed" answers; the document itself and
/// the metrics are served without a token.
async fn every_documented_operation_is_served(backend: Backend) {
    let server = TestServer::start(backend).await;
    let response = server
        .http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, document());
    for (method, path) in documented(&served) {
        let open = served["paths"][&path][&method]["security"]
            .as_array()
            .is_some_and(Vec::is_empty);
        let concrete: String = path
            .split('/')
            .map(|p| if p.starts_with('{') { "x1" } else { p })
            .collect::<Vec<_>>()
            .join("/");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = server
            .http
            .request(method.clone(), format!("{}{concrete}", server.base))
            .send()
            .await
            .unwrap();
        // Operations without security are served to anyone; the rest ask for a token.
        let expected = if open {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(
            response.status(),
            expected,
            "{method} {concrete} is not served as documented"
        );
    }
    // And an undocumented one is not.
    let response = server
        .http
        .get(format!("{}/admin/v1/nothing", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

crate::both_backends!(every_documented_operation_is_served);
