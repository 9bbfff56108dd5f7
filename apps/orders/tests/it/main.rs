//! Integration tests of the orders service: every route and error over the router on the
//! real SQLite store, concurrency on one order, and the real binary killed and restarted.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod api;
mod auth;
mod cluster;
mod codecs;
mod concurrency;
mod config;
mod errors;
mod golden;
mod limits;
mod migrate;
mod nats;
mod openapi;
mod operations;
mod process;
mod reads;
mod rebuild;
mod redis_views;
mod sagas;
mod search;
mod snapshots;
mod support;
mod ui;
