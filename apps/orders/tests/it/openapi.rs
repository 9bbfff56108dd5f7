//! `GET /openapi.json` describes exactly the routes the router serves.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;

use crate::support::Service;

/// Every route of the service: the API users' scripts depend on.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/customers"),
    ("get", "/customers/{id}"),
    ("get", "/customers/{id}/orders"),
    ("post", "/products"),
    ("get", "/products/{sku}"),
    ("post", "/products/{sku}/restock"),
    ("post", "/orders"),
    ("get", "/orders"),
    ("get", "/orders/{id}"),
    ("post", "/orders/{id}/lines"),
    ("post", "/orders/{id}/confirm"),
    ("post", "/orders/{id}/ship"),
    ("post", "/orders/{id}/cancel"),
    ("get", "/reports/sales"),
    ("get", "/search/orders"),
    ("get", "/admin/projections"),
    ("get", "/admin/projections/{name}/parked"),
    ("post", "/admin/projections/{name}/parked/{view_id}/retry"),
    ("post", "/admin/projections/{name}/parked/{view_id}/skip"),
    ("get", "/admin/projections/{name}/skipped"),
    ("post", "/admin/projections/{name}/rebuild"),
    ("get", "/admin/sagas"),
    ("get", "/admin/sagas/{name}/{id}"),
    ("get", "/admin/streams/{aggregate_type}/{id}"),
    ("get", "/admin/events"),
    ("get", "/admin/ui"),
    ("get", "/admin/ui/app.js"),
    ("get", "/admin/ui/app.css"),
    ("get", "/audit"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn document(service: &Service) -> Value {
    let answer = service.get("/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.body
}

fn described(document: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

/// Asks the router for `path` (parameters filled in) with `method`; true when a route
/// answered rather than the router's fallbacks (404 "no such route", 405).
async fn served(service: &Service, method: &str, path: &str) -> bool {
    let concrete = path
        .split('/')
        .map(|segment| if segment.starts_with('{') { "x" } else { segment })
        .collect::<Vec<_>>()
        .join("/");
    let request = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(&concrete)
        .header("content-type", "application/json")
        .body(if method == "get" { Body::empty() } else { Body::from("{}") })
        .unwrap();
    let (status, _, body) = service.raw(request).await;
    let fallback = status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND
            && String::from_utf8_lossy(&body).contains("no such route"));
    !fallback
}

#[tokio::test]
async fn the_document_and_the_router_name_the_same_routes() {
    let service = Service::start().await;
    let document = document(&service).await;
    assert_eq!(document["openapi"], "3.1.0");
    let expected: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path)| ((*method).to_owned(), (*path).to_owned())).collect();
    assert_eq!(described(&document), expected, "the document describes every route, no other");
    for path in document["paths"].as_object().unwrap().keys() {
        for method in METHODS {
            let is_described = expected.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                served(&service, method, path).await,
                is_described,
                "{method} {path}: the router serves it exactly when the document describes it"
            );
        }
    }
}

#[tokio::test]
async fn every_operation_describes_its_answers_and_errors() {
    let service = Service::start().await;
    let document = document(&service).await;
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{method} {path} describes its success"
            );
            let default = &responses["default"]["content"]["application/problem+json"]["schema"];
            assert_eq!(default["$ref"], "#/components/schemas/Problem", "{method} {path}");
        }
    }
    // Every schema named anywhere is in the document.
    let text = document.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "schema {name} is referred to but missing");
    }
    let add_line = &document["paths"]["/orders/{id}/lines"]["post"];
    let headers: Vec<&str> = add_line["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .filter_map(|p| p["name"].as_str())
        .collect();
    for header in ["Idempotency-Key", "If-Match", "x-correlation-id"] {
        assert!(headers.contains(&header), "commands describe {header}: {headers:?}");
    }
    assert!(add_line["responses"]["412"].is_object(), "a stale If-Match is described");
    assert!(
        document["paths"]["/orders/{id}"]["get"]["responses"]["200"]["headers"]["X-View-Position"]
            .is_object(),
        "queries describe the position they reflect"
    );
}
