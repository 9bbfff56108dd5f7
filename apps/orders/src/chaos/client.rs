//! The chaos runs' HTTP client: one request, bounded in time, its answer's status and body.

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one attempt may take before the client treats it as failed. Longer than any
/// bound the service promises (5 s for a command, 1 s for `/health`), so a service that keeps
/// its promises is never cut off by the client.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// A pooled HTTP/1 client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client keeping up to `connections` idle connections per host.
    pub fn new(connections: usize) -> Self {
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build_http();
        Client { inner }
    }

    /// Sends one request; a body that is not JSON comes back as `Value::Null`.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request.body(Full::new(bytes))?;
        let exchange = async {
            let response = self.inner.request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {url}: no answer within {ATTEMPT_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {url}"))
    }
}
