//! The one integration-test binary of `strata-nats`: the publisher on the real NATS server,
//! killed mid-stream again and again, and what a JetStream consumer then receives; and a
//! follower reading a stream back into a store, through disorder, repeats and a restart.
//!
//! Every test uses its own stream and subject prefix from `strata_testkit::services::nats`
//! and deletes the stream when it ends. Without a reachable server the tests print why and
//! pass, unless `STRATA_REQUIRE_SERVICES=1`.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on any unexpected error")]

mod publisher;
mod source;

use async_nats::jetstream;
use strata_nats::NatsSettings;
use strata_testkit::services::NatsFixture;

/// The publisher's and reader's settings for the test's own stream and subjects.
pub(crate) fn settings(fixture: &NatsFixture) -> NatsSettings {
    NatsSettings {
        url: fixture.url.clone(),
        stream: fixture.stream.clone(),
        subject_prefix: fixture.subject_prefix.clone(),
    }
}

/// Deletes the test's stream when the test ends, however it ends.
pub(crate) struct DeleteStream(pub(crate) NatsFixture);

impl Drop for DeleteStream {
    fn drop(&mut self) {
        let (url, stream) = (self.0.url.clone(), self.0.stream.clone());
        let deleted = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = async_nats::connect(url).await.ok()?;
                jetstream::new(client).delete_stream(stream).await.ok()
            })
        });
        if deleted.join().ok().flatten().is_none() {
            eprintln!("could not delete the test stream {}", self.0.stream);
        }
    }
}
