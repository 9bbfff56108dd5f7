//! The one integration-test binary of `strata-redis`: the view-manager contract on the real
//! server, and runners killed mid-batch applying nothing twice.
//!
//! Every test works under its own key prefix from `strata_testkit::services::redis`, whose
//! keys are deleted when the test ends. Without a reachable server the tests print why and
//! pass, unless `STRATA_REQUIRE_SERVICES=1`.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on any unexpected error")]

mod contract;
mod exactly_once;
