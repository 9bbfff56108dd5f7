//! HTTP request metrics, kept for `/metrics`: requests by route template, method and status,
//! and a latency histogram per route. Counted by [`crate::EveryRequest`], the middleware
//! any Strata application layers over its router, in the [`HttpMetrics`] its admin routes
//! report.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::server::ConnectionCounts;

type Labels = Vec<(String, String)>;

/// Latency buckets from 0.25 ms to about 4 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The node's HTTP request counters. Clones share them.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// What [`crate::server::serve`] did with connections.
    pub connections: Arc<ConnectionCounts>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections: Arc::default(),
        }
    }
}

impl HttpMetrics {
    /// Empty counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = vec![
            ("route".to_owned(), route.to_owned()),
            ("method".to_owned(), method.to_owned()),
            ("status".to_owned(), status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        let route = vec![("route".to_owned(), route.to_owned())];
        self.latency.get_or_create(&route).observe(seconds);
    }

    /// Adds the families to a registry being encoded.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "strata_http_requests",
            "HTTP requests answered, by route template, method and status",
            self.requests.clone(),
        );
        registry.register(
            "strata_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route template",
            self.latency.clone(),
        );
        let open = Gauge::<i64, AtomicI64>::default();
        open.set(i64::try_from(self.connections.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        registry.register("strata_http_connections_open", "HTTP connections open now", open);
        let closed = Family::<Labels, Counter>::default();
        for (reason, count) in [
            ("refused", &self.connections.refused),
            ("header_timeout", &self.connections.header_timeouts),
            ("idle", &self.connections.idle_closed),
            ("evicted", &self.connections.evicted),
        ] {
            let labels = vec![("reason".to_owned(), reason.to_owned())];
            closed.get_or_create(&labels).inc_by(count.load(Ordering::Relaxed));
        }
        registry.register(
            "strata_http_connections_closed",
            "HTTP connections the server closed: refused at the connection limit, too slow to \
             send a request's head, or idle too long",
            closed,
        );
    }
}
