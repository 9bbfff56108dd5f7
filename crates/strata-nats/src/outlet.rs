//! [`JetStreamOutlet`]: publishing a batch of events and waiting for every acknowledgement.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use strata::{Outlet, RecordedEvent, StreamId};

/// The stream events go to unless another is named.
pub const DEFAULT_STREAM: &str = "STRATA_EVENTS";
/// What every subject starts with unless another prefix is given.
pub const DEFAULT_SUBJECT_PREFIX: &str = "strata.events";

/// How long connecting may take.
const CONNECT_BOUND: Duration = Duration::from_secs(3);
/// How long the server may take to answer a request (a stream lookup, one publish's ack).
pub(crate) const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// How long a whole batch's acknowledgements may take.
const BATCH_BOUND: Duration = Duration::from_secs(15);

/// Turns an event into a message body.
pub type Encoder = fn(&RecordedEvent) -> Result<Vec<u8>, String>;

/// Where and under what names events are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// The JetStream stream, created when missing.
    pub stream: String,
    /// What every subject starts with; the stream takes `{prefix}.>`.
    pub subject_prefix: String,
}

/// Why the outlet could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A stream name JetStream refuses.
    #[error("{0:?} is not a usable stream name: 1 to 64 letters, digits, _ or -")]
    StreamName(String),
    /// A subject prefix that is not a plain subject.
    #[error(
        "{0:?} is not a usable subject prefix: dot-separated tokens of letters, digits, _ or -"
    )]
    SubjectPrefix(String),
    /// The server did not answer.
    #[error("NATS at {url} does not answer: {reason}")]
    Unreachable {
        /// The server, without any password.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// JetStream refused the stream (not enabled, or the name or subjects clash).
    #[error("JetStream stream {stream} cannot be used: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// What the server said.
        reason: String,
    },
}

/// `url` with any user and password replaced, for messages.
pub(crate) fn masked(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn plain(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a stream name: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_stream_name(name: &str) -> Result<(), NatsError> {
    if plain(name) && name.len() <= 64 {
        Ok(())
    } else {
        Err(NatsError::StreamName(name.to_owned()))
    }
}

/// Checks a subject prefix: tokens of `[A-Za-z0-9_-]` joined by dots, at most 128 bytes.
pub fn check_subject_prefix(prefix: &str) -> Result<(), NatsError> {
    if prefix.len() <= 128 && prefix.split('.').all(plain) {
        Ok(())
    } else {
        Err(NatsError::SubjectPrefix(prefix.to_owned()))
    }
}

/// A subject token for any text: characters a subject cannot hold (dots, spaces,
/// wildcards) become `_`; the body keeps the real value.
fn token(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>') { c } else { '_' })
        .collect();
    if cleaned.is_empty() { "_".to_owned() } else { cleaned }
}

/// The subject of an event of `stream`: `{prefix}.{aggregate_type}.{aggregate_id}`.
pub fn subject(prefix: &str, stream: &StreamId) -> String {
    format!("{prefix}.{}.{}", token(&stream.aggregate_type), token(&stream.id))
}

/// Connects to the server, bounded; once connected the client reconnects for as long as it
/// takes, and each request is bounded on its own.
pub(crate) async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, NatsError> {
    let unreachable =
        |reason: String| NatsError::Unreachable { url: masked(&settings.url), reason };
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_BOUND)
        .request_timeout(Some(ANSWER_BOUND))
        .max_reconnects(None)
        .connect(settings.url.as_str());
    match tokio::time::timeout(CONNECT_BOUND * 2, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(unreachable(error.to_string())),
        Err(_) => Err(unreachable(format!("no answer in {:?}", CONNECT_BOUND * 2))),
    }
}

/// Publishes events to one JetStream stream.
pub struct JetStreamOutlet {
    context: jetstream::Context,
    prefix: String,
    encode: Encoder,
}

impl std::fmt::Debug for JetStreamOutlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamOutlet").field("prefix", &self.prefix).finish()
    }
}

impl JetStreamOutlet {
    /// Connects, creates the stream when missing, and publishes bodies made by `encode`.
    pub async fn connect(settings: &NatsSettings, encode: Encoder) -> Result<Self, NatsError> {
        check_stream_name(&settings.stream)?;
        check_subject_prefix(&settings.subject_prefix)?;
        let client = connect(settings).await?;
        let context = jetstream::new(client);
        let config = stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            ..Default::default()
        };
        let stream_error =
            |reason: String| NatsError::Stream { stream: settings.stream.clone(), reason };
        match tokio::time::timeout(ANSWER_BOUND * 2, context.get_or_create_stream(config)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(stream_error(error.to_string())),
            Err(_) => return Err(stream_error(format!("no answer in {:?}", ANSWER_BOUND * 2))),
        }
        Ok(Self { context, prefix: settings.subject_prefix.clone(), encode })
    }

    /// The connection's JetStream context, for consumers in tests and tools.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    async fn publish_all(&self, events: &[RecordedEvent]) -> Result<(), String> {
        // Every message goes out before the first acknowledgement is awaited: one round trip
        // per batch, and the server keeps them in the order sent on this connection.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let body = (self.encode)(event).map_err(|error| {
                format!("the event at position {} cannot be published: {error}", event.position)
            })?;
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.metadata.event_id.to_string().as_str());
            let ack = self
                .context
                .publish_with_headers(subject(&self.prefix, &event.stream), headers, body.into())
                .await
                .map_err(|error| format!("publishing position {}: {error}", event.position))?;
            acks.push((event.position, ack));
        }
        for (position, ack) in acks {
            ack.await
                .map_err(|error| format!("no acknowledgement for position {position}: {error}"))?;
        }
        Ok(())
    }
}

impl Outlet for JetStreamOutlet {
    async fn deliver(&self, events: &[RecordedEvent]) -> Result<(), String> {
        match tokio::time::timeout(BATCH_BOUND, self.publish_all(events)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("JetStream did not acknowledge a batch in {BATCH_BOUND:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_plain_tokens_whatever_the_ids() {
        let stream = StreamId::new("order", "o.1 *>");
        assert_eq!(subject("strata.events", &stream), "strata.events.order.o_1___");
        assert!(check_subject_prefix("a.b-c_d").is_ok());
        for bad in ["", "a..b", "a.*", "a b", "a.>", "."] {
            assert!(check_subject_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_stream_name("STRATA_EVENTS").is_ok());
        assert!(check_stream_name("a.b").is_err());
    }
}
