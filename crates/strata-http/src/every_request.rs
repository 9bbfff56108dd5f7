//! [`EveryRequest`]: what a Strata service does around each request, as one layer.
//!
//! In order, from the outside in: take or make the correlation id (400 for a bad one), open
//! the request's span (method, route template, correlation id), hand the handlers the
//! [`Shutdown`] and the [`CorrelationId`], and bound a read's time ([`ReadTimeout`] plus the
//! `wait_ms` it asked for). On the way out, from the inside: end a JSON answer with a line
//! break, give a read's `200` an `ETag` (304 when `If-None-Match` names it), count the
//! answer in [`HttpMetrics`], log it with its status and latency (never its body), and echo
//! the correlation id.
//!
//! One layer rather than one per concern, and a hand-written one: each axum `from_fn` layer
//! clones and boxes the service inside it for every request; with six of them axum's own
//! code was 12% of serve's CPU under load (docs/benchmarks.md, eleventh round). This one
//! calls the route before it boxes its answer, so it neither clones the route nor boxes
//! it again.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::correlation::{self, CORRELATION_HEADER, CorrelationId};
use crate::metrics::HttpMetrics;
use crate::problem::Problem;
use crate::server::{ReadTimeout, read_bound};
use crate::shutdown::Shutdown;

/// The layer around every route: lay it outermost, `router.layer(EveryRequest { .. })`.
#[derive(Debug, Clone)]
pub struct EveryRequest {
    /// Where answered requests are counted.
    pub metrics: Arc<HttpMetrics>,
    /// Ends waiting queries when the service stops.
    pub shutdown: Shutdown,
    /// How long a read may take beyond the wait it asked for.
    pub read_timeout: ReadTimeout,
}

impl<S> Layer<S> for EveryRequest {
    type Service = EveryRequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EveryRequestService { inner, around: self.clone() }
    }
}

/// A route behind [`EveryRequest`]. The read's time bound covers the route's answer, not its
/// `call`: axum's routes do their work when the answer is polled.
#[derive(Debug, Clone)]
pub struct EveryRequestService<S> {
    inner: S,
    around: EveryRequest,
}

impl<S> Service<Request> for EveryRequestService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let around = &self.around;
        let id = correlation::requested(&request);
        // Unmatched paths share one label, so a scanner cannot grow the metric families or
        // the log's routes without bound.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("(no route)", MatchedPath::as_str)
            .to_owned();
        let method = request.method().clone();
        let span = tracing::info_span!(
            "request",
            method = %method,
            route = %route,
            correlation_id = %id.as_deref().unwrap_or("(invalid)"),
        );
        let started = Instant::now();
        // The route is called here, not inside the answer's future, so that the answer
        // needs no clone of it.
        let routed = match &id {
            Ok(id) => {
                request.extensions_mut().insert(CorrelationId(id.clone()));
                request.extensions_mut().insert(around.shutdown.clone());
                let read = method == Method::GET || method == Method::HEAD;
                let if_none_match =
                    if read { request.headers().get(header::IF_NONE_MATCH).cloned() } else { None };
                let bound = read.then(|| read_bound(around.read_timeout, &request));
                let answer = span.in_scope(|| self.inner.call(request));
                Ok((answer, read, if_none_match, bound))
            }
            Err(problem) => Err(problem.clone()),
        };
        let metrics = around.metrics.clone();
        Box::pin(async move {
            let mut response = match routed {
                Ok((answer, read, if_none_match, bound)) => {
                    let answered = async {
                        let answer = async {
                            let Ok(response) = answer.await;
                            response
                        };
                        let response = match bound {
                            Some(bound) => match tokio::time::timeout(bound, answer).await {
                                Ok(response) => response,
                                Err(_) => Problem::timed_out(format!(
                                    "the read took longer than {} ms; try again",
                                    bound.as_millis()
                                ))
                                .into_response(),
                            },
                            None => answer.await,
                        };
                        let response = crate::json::end_with_newline(response).await;
                        let response = if read {
                            crate::conditional::tagged(if_none_match, response).await
                        } else {
                            response
                        };
                        let status = response.status().as_u16();
                        let seconds = started.elapsed().as_secs_f64();
                        metrics.record(&route, method.as_str(), status, seconds);
                        response
                    };
                    answered.instrument(span.clone()).await
                }
                // Refused before the request goes further, so not counted; its body still
                // ends with a line break, like every other problem's.
                Err(problem) => crate::json::end_with_newline(problem.into_response()).await,
            };
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let status = response.status().as_u16();
            span.in_scope(|| {
                // Probes come every few seconds; at info they would drown the requests
                // people make.
                if matches!(route.as_str(), "/health" | "/metrics") {
                    tracing::debug!(status, latency_ms, "request answered");
                } else {
                    tracing::info!(status, latency_ms, "request answered");
                }
            });
            if let Ok(id) = &id
                && let Ok(value) = HeaderValue::from_str(id)
            {
                response.headers_mut().insert(CORRELATION_HEADER.clone(), value);
            }
            Ok(response)
        })
    }
}
