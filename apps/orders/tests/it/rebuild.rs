//! Live views against a replay from zero: every projection of the service is replayed into
//! fresh storage and compared with what the running service kept, documents and tables.

use std::sync::Arc;

use orders::views::{
    self, CUSTOMER_ORDERS, CustomerView, ListedOrder, OrderView, ProductView, SALES_DAILY,
};
use serde::de::DeserializeOwned;
use strata::table::TableQuery;
use strata::{EventStore, ViewManager};

async fn same_view<V: DeserializeOwned + PartialEq + std::fmt::Debug + Send + 'static>(
    live: &impl ViewManager,
    rebuilt: &impl ViewManager,
    projection: &str,
    id: &str,
) {
    let live = live.get::<V>(projection, id).await.unwrap();
    let rebuilt = rebuilt.get::<V>(projection, id).await.unwrap();
    assert!(live.is_some(), "{projection}/{id} exists");
    let (live, rebuilt) = (live.map(|s| (s.view, s.parked)), rebuilt.map(|s| (s.view, s.parked)));
    assert_eq!(live, rebuilt, "{projection}/{id}: live view equals a replay from zero");
}

/// Replays every projection of the service from `events` into `fresh` and asserts that the
/// customers, products and orders named, every order's list row and the whole sales table
/// equal what `live` holds.
pub async fn views_equal_a_replay<S: EventStore, M: ViewManager, F: ViewManager>(
    events: Arc<S>,
    live: &M,
    fresh: Arc<F>,
    customers: &[&str],
    products: &[&str],
    orders: &[String],
) {
    views::customers().catch_up(events.clone(), fresh.clone()).await.unwrap();
    views::customer_orders().catch_up(events.clone(), fresh.clone()).await.unwrap();
    views::products().catch_up(events.clone(), fresh.clone()).await.unwrap();
    views::orders().catch_up(events.clone(), fresh.clone()).await.unwrap();
    views::sales_daily().catch_up(events.clone(), fresh.clone()).await.unwrap();
    strata::audit::projection::<orders::domain::OrdersEvent>()
        .catch_up(events.clone(), fresh.clone())
        .await
        .unwrap();
    for id in customers {
        same_view::<CustomerView>(live, fresh.as_ref(), "customers", id).await;
    }
    for sku in products {
        same_view::<ProductView>(live, fresh.as_ref(), "products", sku).await;
    }
    for id in orders {
        same_view::<OrderView>(live, fresh.as_ref(), "orders", id).await;
        same_view::<ListedOrder>(live, fresh.as_ref(), "customer_orders", id).await;
    }
    for table in [&CUSTOMER_ORDERS, &SALES_DAILY, &strata::audit::AUDIT_EVENTS] {
        let all = TableQuery {
            order_by: vec![table.columns[0].name, table.columns[1].name],
            ..TableQuery::default()
        };
        let (kept, replayed) =
            (live.select(table, &all).await.unwrap(), fresh.select(table, &all).await.unwrap());
        assert_eq!(kept, replayed, "table {}: live rows equal a replay from zero", table.name);
    }
}
