//! `GET /search/orders`: orders found by their customer's name, their skus, their products'
//! names and their shipping address, in the node's own search index (`strata-search`).
//!
//! The index holds three kinds of document: each order (the same state as `GET
//! /orders/{id}`, found by its text), and each customer's and product's name, kept only to
//! be looked up when an order's text is made. A name is looked up the first time an order
//! needs it and remembered; names never change in this domain, so an order's text stays true.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use strata::{Envelope, RecordedEvent, View};
use strata_search::{Documents, Indexer};

use super::OrderView;
use crate::domain::{CustomerEvent, OrdersEvent, ProductEvent};

/// The projection's name, as `/admin/projections` lists it.
pub const ORDER_SEARCH: &str = "order_search";
/// The kind of the documents searches return.
pub const ORDER: &str = "order";
const CUSTOMER: &str = "customer";
const PRODUCT: &str = "product";

/// A customer's or product's name, kept to be looked up.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Name {
    name: String,
}

/// Keeps the orders' search documents from the log.
#[derive(Debug, Default)]
pub struct OrderIndexer {
    /// Names already found. An order's text needs its customer's name and every line's
    /// product's name at each of its events, and a lookup in the index searches each of its
    /// segments and reads a stored document (ten lookups for a line added to a nine-line
    /// order). Names never change in this domain, so one found stays true, across batches
    /// and rebuilds.
    names: Mutex<Names>,
}

/// Found names by id, forgotten all at once when there are [`MAX_NAMES`] of a kind.
#[derive(Debug, Default)]
struct Names {
    customers: HashMap<String, String>,
    products: HashMap<String, String>,
}

/// The most names of one kind kept in memory.
const MAX_NAMES: usize = 100_000;

impl OrderIndexer {
    fn name(
        &self,
        documents: &Documents<'_>,
        kind: &str,
        id: &str,
    ) -> Result<Option<String>, String> {
        if let Some(name) = self.known(kind, |known| known.get(id).cloned()) {
            return Ok(Some(name));
        }
        let found = documents.get::<Name>(kind, id)?.map(|found| found.name);
        if let Some(name) = &found {
            self.known(kind, |known| {
                if known.len() >= MAX_NAMES {
                    known.clear();
                }
                known.insert(id.to_owned(), name.clone());
            });
        }
        Ok(found)
    }

    /// Runs `work` on the names of `kind` found so far.
    fn known<T>(&self, kind: &str, work: impl FnOnce(&mut HashMap<String, String>) -> T) -> T {
        // A panic cannot leave a map changed in a way that matters: at worst a name is
        // missing, and looked up again.
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        work(if kind == CUSTOMER { &mut names.customers } else { &mut names.products })
    }

    /// What an order is found by: its customer's id and name, each line's sku and product
    /// name, its shipping address.
    fn text(&self, documents: &Documents<'_>, order: &OrderView) -> Result<String, String> {
        let mut words = vec![order.id.clone(), order.customer_id.clone()];
        words.extend(self.name(documents, CUSTOMER, &order.customer_id)?);
        for line in &order.lines {
            words.push(line.sku.clone());
            words.extend(self.name(documents, PRODUCT, &line.sku)?);
        }
        words.extend(order.shipping_address.clone());
        Ok(words.join("\n"))
    }
}

impl Indexer for OrderIndexer {
    fn index(&self, event: &RecordedEvent, documents: &mut Documents<'_>) -> Result<(), String> {
        // An event that does not decode or apply parks its order in the `orders` view, where
        // an operator sees and settles it; here its order keeps the document it had, so that
        // one bad event does not stop every search.
        let envelope = match Envelope::<OrdersEvent>::decode(event) {
            Ok(envelope) => envelope,
            Err(error) => {
                passed_over(event, &error.to_string());
                return Ok(());
            }
        };
        let id = envelope.stream.id.as_str();
        match &envelope.event {
            OrdersEvent::Customer(CustomerEvent::CustomerRegistered(registered)) => {
                documents.put(CUSTOMER, id, Name { name: registered.name.clone() }, None);
            }
            OrdersEvent::Product(ProductEvent::ProductCreated(created)) => {
                documents.put(PRODUCT, id, Name { name: created.name.clone() }, None);
            }
            OrdersEvent::Product(_) => {}
            OrdersEvent::Order(_) => {
                let mut order = documents.get::<OrderView>(ORDER, id)?.unwrap_or_default();
                if let Err(error) = order.apply(&envelope) {
                    passed_over(event, &error.to_string());
                    return Ok(());
                }
                let text = self.text(documents, &order)?;
                documents.put(ORDER, id, order, Some(text));
            }
        }
        Ok(())
    }
}

fn passed_over(event: &RecordedEvent, error: &str) {
    tracing::warn!(
        projection = ORDER_SEARCH,
        position = event.position.0,
        stream = %event.stream,
        error,
        "the search index passes over an event it cannot take; its order keeps its document"
    );
}
