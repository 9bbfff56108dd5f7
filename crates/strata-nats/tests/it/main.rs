//! The one integration-test binary of `strata-nats`: the publisher on the real NATS server,
//! killed mid-stream again and again, and what a JetStream consumer then receives.
//!
//! Every test uses its own stream and subject prefix from `strata_testkit::services::nats`
//! and deletes the stream when it ends. Without a reachable server the tests print why and
//! pass, unless `STRATA_REQUIRE_SERVICES=1`.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on any unexpected error")]

mod publisher;
