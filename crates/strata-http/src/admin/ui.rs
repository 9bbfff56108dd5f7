//! `/admin/ui`: the admin UI, a page and its script and styles compiled into the binary (no
//! build step, nothing fetched from elsewhere). They hold no data, so they are served without
//! a token; the page asks for one when the API it calls answers 401.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLES: &str = include_str!("ui/app.css");

/// Everything the page loads comes from this server; it runs no inline script.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The admin UI: projections with rebuild, parked instances with retry and skip, streams,
/// audits, sagas and a live tail of the log.
#[utoipa::path(get, path = "/admin/ui", tag = "operations", security(()),
    responses((status = 200, description = "The admin UI's page.", content_type = "text/html; charset=utf-8", body = String)))]
pub(super) async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// The admin UI's script.
#[utoipa::path(get, path = "/admin/ui/app.js", tag = "operations", security(()),
    responses((status = 200, content_type = "text/javascript; charset=utf-8", body = String)))]
pub(super) async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The admin UI's styles.
#[utoipa::path(get, path = "/admin/ui/app.css", tag = "operations", security(()),
    responses((status = 200, content_type = "text/css; charset=utf-8", body = String)))]
pub(super) async fn styles() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLES)
}
