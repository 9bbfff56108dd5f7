//! `GET /search/orders?q=…&limit=…`: orders ranked by how well their customer's name, skus,
//! product names and shipping address match `q`, from this node's search index.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use strata_http::{Problem, ViewWait, paging};

use super::queries::{answer, projection};
use crate::app::{App, Backend};
use crate::domain::OrderStatus;
use crate::views::{ORDER, ORDER_SEARCH, OrderView};

/// The longest query text taken.
const MAX_QUERY_CHARS: usize = 1000;
/// The deepest nesting of parentheses taken.
const MAX_NESTING: usize = 32;

/// The query string of a search; `min_position` and `wait_ms` are read by [`ViewWait`].
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// What to look for (required): words are alternatives, ranked by BM25; `+word`
    /// requires a word, `"two words"` is a phrase.
    q: Option<String>,
    /// Hits to return: 1 to 500, default 50.
    limit: Option<String>,
}

/// One order found.
#[derive(Serialize, utoipa::ToSchema)]
struct SearchHit {
    id: String,
    /// How well it matches (BM25); hits come best first.
    score: f32,
    customer_id: String,
    status: OrderStatus,
    total_cents: i64,
}

/// The orders found.
#[derive(Serialize, utoipa::ToSchema)]
struct SearchAnswer {
    /// How many orders match in all, not only those returned.
    total: u64,
    hits: Vec<SearchHit>,
}

/// Orders matching a text, best first.
#[utoipa::path(get, path = "/search/orders", tag = "queries", params(SearchParams, strata_http::WaitParams),
    responses((status = 200, body = SearchAnswer, headers(("X-View-Position" = u64, description = "The position the index reflects.")))))]
pub async fn orders<B: Backend>(
    State(app): State<Arc<App<B>>>,
    params: Result<Query<SearchParams>, QueryRejection>,
    wait: ViewWait,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let text = params.q.unwrap_or_default();
    if text.trim().is_empty() || text.chars().count() > MAX_QUERY_CHARS {
        return Err(Problem::bad_request(format!(
            "q must be 1 to {MAX_QUERY_CHARS} characters of text to look for"
        )));
    }
    // The query grammar is parsed recursively: a deep nesting could exhaust the stack.
    let mut depth: usize = 0;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(Problem::bad_request(format!(
                "q nests parentheses more than {MAX_NESTING} deep"
            )));
        }
    }
    let limit = paging::limit(params.limit.as_deref())?;
    let Some(index) = app.search.clone() else {
        return Err(Problem::not_found(
            "search is off on this node: it was started with --no-search, or on PostgreSQL \
             without --search-dir DIR",
        ));
    };
    let position = wait.until_ready(projection(&app, ORDER_SEARCH)?, app.events().as_ref()).await?;
    let found = tokio::task::spawn_blocking(move || index.search(ORDER, &text, limit))
        .await
        .map_err(|error| Problem::internal(&error))?;
    let found = found.map_err(|error| match error {
        strata_search::SearchError::Query { .. } => Problem::bad_request(error.to_string()),
        strata_search::SearchError::Index { .. } => Problem::unavailable(&error),
    })?;
    let mut hits = Vec::with_capacity(found.hits.len());
    for hit in found.hits {
        let order: OrderView =
            serde_json::from_str(&hit.body).map_err(|e| Problem::internal(&e))?;
        hits.push(SearchHit {
            id: hit.id,
            score: hit.score,
            customer_id: order.customer_id,
            status: order.status,
            total_cents: order.total_cents,
        });
    }
    Ok(answer(SearchAnswer { total: found.total, hits }, position))
}
