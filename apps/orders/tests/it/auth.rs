//! Bearer tokens with roles: every role on every route group, the subject recorded as the
//! user of the events a request causes, `strata auth add-token`, and no open port beyond
//! loopback without tokens.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use strata::CommandContext;
use strata_http::Role;
use strata_http::auth::{AuthFile, TokenEntry, token_hash};

use crate::support::Service;

fn tokens() -> Arc<strata_http::Tokens> {
    let entry = |subject: &str, role, token: &str| TokenEntry {
        subject: subject.into(),
        role,
        sha256: token_hash(token),
    };
    let file = AuthFile {
        tokens: vec![
            entry("reader", Role::Read, "t-read"),
            entry("writer", Role::Write, "t-write"),
            entry("operator", Role::Admin, "t-admin"),
        ],
    };
    Arc::new(strata_http::Tokens::new(&file))
}

async fn status(service: &Service, method: Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = Request::builder().method(method.clone()).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = if method == Method::POST {
        request = request.header("content-type", "application/json");
        Body::from(r#"{"qty":1}"#)
    } else {
        Body::empty()
    };
    let (status, headers, bytes) = service.raw(request.body(body).unwrap()).await;
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        assert_eq!(headers.get("content-type").unwrap(), "application/problem+json");
        let problem: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(problem["status"], status.as_u16());
    }
    status
}

#[tokio::test]
async fn every_role_on_every_route_group() {
    let service = Service::start_with_tokens(tokens()).await;
    let context = CommandContext::new("setup");
    service
        .app
        .register_customer("ada", "Ada".into(), "ada@example.com".into(), &context)
        .await
        .unwrap();
    let created = service.app.create_product("tea", "Tea".into(), 450, &context).await.unwrap();
    // Read as a client reads its own write: at the position the command answered with.
    let product = format!("/products/tea?min_position={}", created.position.unwrap().0);

    let groups: [(&str, Method, &str); 5] = [
        ("query", Method::GET, &product),
        ("command", Method::POST, "/products/tea/restock"),
        ("operator", Method::GET, "/admin/projections"),
        ("metrics", Method::GET, "/metrics"),
        ("health", Method::GET, "/health"),
    ];
    use StatusCode as S;
    let expected: [(Option<&str>, [StatusCode; 5]); 5] = [
        (None, [S::UNAUTHORIZED, S::UNAUTHORIZED, S::UNAUTHORIZED, S::UNAUTHORIZED, S::OK]),
        (
            Some("t-guess"),
            [S::UNAUTHORIZED, S::UNAUTHORIZED, S::UNAUTHORIZED, S::UNAUTHORIZED, S::OK],
        ),
        (Some("t-read"), [S::OK, S::FORBIDDEN, S::FORBIDDEN, S::FORBIDDEN, S::OK]),
        (Some("t-write"), [S::OK, S::OK, S::FORBIDDEN, S::FORBIDDEN, S::OK]),
        (Some("t-admin"), [S::OK, S::OK, S::OK, S::OK, S::OK]),
    ];
    for (token, statuses) in expected {
        for ((group, method, path), want) in groups.iter().zip(statuses) {
            let got = status(&service, method.clone(), path, token).await;
            assert_eq!(got, want, "{group} {path} with {token:?}");
        }
    }

    // The scheme's name is case-insensitive.
    let upper = Request::builder()
        .uri("/products/tea")
        .header("authorization", "BEARER t-read")
        .body(Body::empty())
        .unwrap();
    assert_eq!(service.raw(upper).await.0, StatusCode::OK);

    // Each restock carries its token's subject as the event's user.
    let users = |events: Value| -> Vec<Value> {
        events.as_array().unwrap().iter().map(|e| e["metadata"]["user"].clone()).collect()
    };
    let tea = send(&service, "/admin/streams/product/tea", "t-admin", None).await;
    assert_eq!(users(tea), [Value::Null, "writer".into(), "operator".into()]);

    // So does everything the fulfilment saga does for the writer's confirmation.
    let order = serde_json::json!({"order_id": "o1", "customer_id": "ada", "lines": [{"sku": "tea", "qty": 1}]});
    send(&service, "/orders", "t-write", Some(order)).await;
    let confirmed =
        send(&service, "/orders/o1/confirm", "t-write", Some(serde_json::json!({}))).await;
    assert_eq!(confirmed["status"], "confirmed", "{confirmed}");
    let o1 = send(&service, "/admin/streams/order/o1", "t-admin", None).await;
    assert_eq!(users(o1), ["writer", "writer", "writer"]);
    let tea = send(&service, "/admin/streams/product/tea", "t-admin", None).await;
    assert_eq!(users(tea).last(), Some(&"writer".into()), "the saga's reservation");
}

async fn send(service: &Service, path: &str, token: &str, body: Option<Value>) -> Value {
    let request = Request::builder()
        .method(if body.is_some() { Method::POST } else { Method::GET })
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
    let (status, _, bytes) = service.raw(request.body(body).unwrap()).await;
    assert!(status.is_success(), "{path}: {status}");
    serde_json::from_slice(&bytes).unwrap()
}
