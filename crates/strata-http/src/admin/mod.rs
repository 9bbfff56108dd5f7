//! The operator's API, for any Strata application: where projections stand and what to do
//! about them (parked instances, retries, skips, rebuilds), a stream's raw events, audits
//! of the log, health and metrics. An application mounts it with [`routes`] beside its own
//! routes; it needs only the event store and the node's [`Projections`]. With bearer
//! tokens configured, every route but `/health` needs the `admin` role.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /admin/projections` | every projection's position, lag, state, parked count, rebuild |
//! | `GET /admin/projections/{name}/parked` | parked instances, oldest first |
//! | `POST /admin/projections/{name}/parked/{view_id}/retry` | the instance after applying its events |
//! | `POST /admin/projections/{name}/parked/{view_id}/skip` `{"reason"}` | the same, without its failing event |
//! | `GET /admin/projections/{name}/skipped` | every event skipped for good |
//! | `POST /admin/projections/{name}/rebuild` | 202: a rebuild began |
//! | `GET /admin/sagas` | every saga's instances by state: active, completed, failed, parked |
//! | `GET /admin/sagas/{name}/{id}` | one instance: its state, next deadline and history |
//! | `GET /admin/streams/{type}/{id}` | the stream's events as stored |
//! | `GET /admin/events?after=N&limit=M` | the log after a position, and the head (the UI's live tail) |
//! | `GET /admin/ui` | the admin UI: a page served from the binary that drives the routes here |
//! | `GET /audit?correlation_id=…\|stream=TYPE/ID\|user=…` | events of one request, stream or user (the audit projection) |
//! | `GET /health` | the store answers; which projections fail |
//! | `GET /metrics` | OpenMetrics text (Prometheus reads it) |

mod events;
mod health;
mod projections;
mod sagas;
mod ui;

use std::sync::Arc;

use strata::{EventStore, Projections, ViewManager};
use utoipa_axum::router::OpenApiRouter;

use crate::openapi::route;

/// What the operator's API reads and acts on.
pub struct Admin<S, M> {
    /// The event store, for streams, audits, the head and health.
    pub store: Arc<S>,
    /// The view store, for the audit table.
    pub views: Arc<M>,
    /// The projections this node runs.
    pub projections: Arc<Projections>,
    /// The sagas this node runs (their projections are among `projections`).
    pub sagas: Arc<strata::saga::Sagas>,
    /// This node's id, shown by `/health`.
    pub node_id: String,
    /// The aggregate types `/admin/streams` accepts.
    pub aggregate_types: Vec<&'static str>,
    /// The HTTP requests counted by [`crate::EveryRequest`], for `/metrics`.
    pub http: Arc<crate::HttpMetrics>,
    /// The commands the application's bus handled ([`strata::CommandBus::counts`]).
    pub commands: Arc<strata::CommandCounts>,
    /// The bearer tokens accepted; with them, every route here but `/health` needs the
    /// `admin` role. `None` runs without authentication.
    pub tokens: Option<Arc<crate::Tokens>>,
}

impl<S, M> Clone for Admin<S, M> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            views: self.views.clone(),
            projections: self.projections.clone(),
            sagas: self.sagas.clone(),
            node_id: self.node_id.clone(),
            aggregate_types: self.aggregate_types.clone(),
            http: self.http.clone(),
            commands: self.commands.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

/// The operator's routes over `admin`, described, ready to merge into an application's
/// router. `/audit` answers when the application runs [`strata::audit::projection`].
pub fn routes<S: EventStore, M: ViewManager>(admin: Admin<S, M>) -> OpenApiRouter {
    let required = crate::Required { tokens: admin.tokens.clone(), role: crate::Role::Admin };
    let operator = OpenApiRouter::new()
        .routes(route::<projections::__path_list, _, _, _>(projections::list::<S, M>))
        .routes(route::<projections::__path_parked, _, _, _>(projections::parked::<S, M>))
        .routes(route::<projections::__path_retry, _, _, _>(projections::retry::<S, M>))
        .routes(route::<projections::__path_skip, _, _, _>(projections::skip::<S, M>))
        .routes(route::<projections::__path_skipped, _, _, _>(projections::skipped::<S, M>))
        .routes(route::<projections::__path_rebuild, _, _, _>(projections::rebuild::<S, M>))
        .routes(route::<sagas::__path_list, _, _, _>(sagas::list::<S, M>))
        .routes(route::<sagas::__path_instance, _, _, _>(sagas::instance::<S, M>))
        .routes(route::<events::__path_stream, _, _, _>(events::stream::<S, M>))
        .routes(route::<events::__path_log, _, _, _>(events::log::<S, M>))
        .routes(route::<events::__path_audit, _, _, _>(events::audit::<S, M>))
        .routes(route::<health::__path_metrics, _, _, _>(health::metrics::<S, M>));
    let operator = crate::guarded(operator, required);
    // Load balancers and orchestrators ask without a token.
    // The UI's page, script and styles hold no data; what they show comes from the routes above.
    let open = OpenApiRouter::new()
        .routes(route::<health::__path_health, _, _, _>(health::health::<S, M>))
        .routes(route::<ui::__path_page, _, _, _>(ui::page))
        .routes(route::<ui::__path_script, _, _, _>(ui::script))
        .routes(route::<ui::__path_styles, _, _, _>(ui::styles));
    operator.merge(open).with_state(admin)
}
