//! [`JetStreamSource`]: a replica's view of the stream a publisher fills, as the core's
//! [`Source`]: the events after a position, in position order, consecutive.
//!
//! Messages are read with an ordered consumer (ephemeral, no acknowledgements; the server
//! keeps nothing for a replica). The body's position, not the stream sequence, orders the
//! events: a batch republished after a dropped connection can store a message after later
//! ones of its batch, and repeats past the duplicate window are stored twice. So messages
//! whose position is already held are dropped, and those that arrive early wait here until
//! the ones before them come.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use strata::{Position, Pulled, RecordedEvent, Source};
use tokio::time::Instant;

use crate::outlet::{ANSWER_BOUND, NatsError, NatsSettings, connect, masked};
use crate::{check_stream_name, check_subject_prefix};

/// Turns a message body back into the event it was made from: the inverse of the
/// publisher's [`crate::Encoder`], position included.
pub type Decoder = fn(&[u8]) -> Result<RecordedEvent, String>;

/// How long a pull waits for a first event.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Once a pull has events, how long it waits for more before answering.
const LINGER: Duration = Duration::from_millis(5);
/// How far below an event's position its message can be stored. The publisher sends a
/// batch (at most 500 events) only once the one before it is acknowledged, so the first
/// copy of position p is stored after every event of the batches before p's, at a stream
/// sequence of at least p - 499; other deployments' messages and repeats only raise it.
const SEQUENCE_SLACK: u64 = 1000;
/// Most events kept waiting for a missing one before the consumer starts again.
const MAX_WAITING: usize = 20_000;

/// Reads one JetStream stream for a follower.
pub struct JetStreamSource {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: NatsSettings,
    decode: Decoder,
    messages: Option<consumer::pull::Ordered>,
    /// Events that arrived before one that is due, by position.
    waiting: BTreeMap<u64, RecordedEvent>,
    /// Messages the server still holds for this reader beyond the last one read.
    pending: u64,
    /// The last position handed over: a pull after an earlier one means those events were
    /// not kept (an append failed), and they are read again.
    handed: u64,
    /// The stream sequence of the last message read, to tell a stream made again.
    read_sequence: u64,
    /// Read the stream from its start at the next opening: the estimate near the head
    /// missed (a stream made again, or filled by another publisher).
    from_start: bool,
}

impl std::fmt::Debug for JetStreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSource").field("stream", &self.settings.stream).finish()
    }
}

impl JetStreamSource {
    /// Connects (bounded) to read `settings.stream`, turning bodies into events with
    /// `decode`. The stream need not exist yet: until it does, pulls fail with a message.
    pub async fn connect(settings: &NatsSettings, decode: Decoder) -> Result<Self, NatsError> {
        check_stream_name(&settings.stream)?;
        check_subject_prefix(&settings.subject_prefix)?;
        let client = connect(settings).await?;
        Ok(Self {
            context: jetstream::new(client.clone()),
            client,
            settings: settings.clone(),
            decode,
            messages: None,
            waiting: BTreeMap::new(),
            pending: 0,
            handed: 0,
            read_sequence: 0,
            from_start: false,
        })
    }

    /// Starts reading at a stream sequence low enough to hold every event after `after`.
    async fn open(&mut self, after: Position) -> Result<(), String> {
        self.waiting.clear();
        self.read_sequence = 0;
        let stream_name = &self.settings.stream;
        let bounded = |what: &str| format!("JetStream did not answer {what} in {ANSWER_BOUND:?}");
        let stream = tokio::time::timeout(ANSWER_BOUND, self.context.get_stream(stream_name))
            .await
            .map_err(|_| bounded("a stream lookup"))?
            .map_err(|error| format!("stream {stream_name}: {error}"))?;
        // A stream that holds fewer messages than that start was made again (or purged)
        // since this copy began: its messages are read from its first, and the positions
        // already held are dropped, rather than waiting past its end for ever.
        let last_sequence = stream.cached_info().state.last_sequence;
        let deliver_policy = match after.0.saturating_sub(SEQUENCE_SLACK) {
            below if below > 0 && below < last_sequence && !self.from_start => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence: below + 1 }
            }
            _ => consumer::DeliverPolicy::All,
        };
        let config = consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", self.settings.subject_prefix),
            deliver_policy,
            ..Default::default()
        };
        let consumer = tokio::time::timeout(ANSWER_BOUND, stream.create_consumer(config))
            .await
            .map_err(|_| bounded("the creation of a consumer"))?
            .map_err(|error| format!("a consumer on stream {stream_name}: {error}"))?;
        let messages = tokio::time::timeout(ANSWER_BOUND, consumer.messages())
            .await
            .map_err(|_| bounded("a first pull"))?
            .map_err(|error| format!("reading stream {stream_name}: {error}"))?;
        self.messages = Some(messages);
        self.from_start = false;
        Ok(())
    }

    /// The next message's event, or `None` if none came by `until`.
    async fn next_event(&mut self, until: Instant) -> Result<Option<RecordedEvent>, String> {
        let Some(messages) = self.messages.as_mut() else { return Ok(None) };
        let message = match tokio::time::timeout_at(until, messages.next()).await {
            Err(_) => return Ok(None),
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                self.messages = None;
                return Err(format!("reading stream {}: {error}", self.settings.stream));
            }
            Ok(None) => {
                self.messages = None;
                return Err(format!("stream {} stopped being read", self.settings.stream));
            }
        };
        // A message that cannot be read is not passed over: reading starts again, so that
        // it is met again (and reported) rather than leaving a hole.
        let Ok(info) = message.info() else {
            self.messages = None;
            return Err(format!("a message of stream {} without its info", self.settings.stream));
        };
        self.pending = info.pending;
        let sequence = info.stream_sequence;
        self.read_sequence = sequence;
        match (self.decode)(&message.payload) {
            Ok(event) => Ok(Some(event)),
            Err(error) => {
                self.messages = None;
                Err(format!(
                    "message {sequence} of stream {} is not an event: {error}",
                    self.settings.stream
                ))
            }
        }
    }

    /// Why nothing came: a lost connection, a stream gone or made again (the consumer
    /// would wait on it without a word), or events that wait for a missing one.
    async fn silence(&mut self, after: Position) -> Result<(), String> {
        if self.client.connection_state() != State::Connected {
            return Err(format!(
                "NATS at {} is not connected; reconnecting",
                masked(&self.settings.url)
            ));
        }
        let stream_name = self.settings.stream.clone();
        let looked_up = tokio::time::timeout(ANSWER_BOUND, self.context.get_stream(&stream_name))
            .await
            .map_err(|_| format!("JetStream did not answer a stream lookup in {ANSWER_BOUND:?}"))
            .and_then(|found| found.map_err(|error| format!("stream {stream_name}: {error}")));
        let stream = match looked_up {
            Ok(stream) => stream,
            Err(error) => {
                self.messages = None;
                return Err(error);
            }
        };
        if stream.cached_info().state.last_sequence < self.read_sequence {
            self.messages = None;
            self.from_start = true;
            return Err(format!("stream {stream_name} was made again; reading it from its start"));
        }
        match self.waiting.keys().next() {
            Some(first) => Err(format!(
                "position {} has not arrived on stream {stream_name}, though positions from \
                 {first} have",
                after.0 + 1,
            )),
            None => Ok(()),
        }
    }
}

impl Source for JetStreamSource {
    async fn pull(&mut self, after: Position, max: usize) -> Result<Pulled, String> {
        if after.0 < self.handed {
            // What was handed over last time was not kept: read it again.
            self.messages = None;
        }
        if self.messages.is_none() {
            self.open(after).await?;
        }
        // Positions already held here are dropped, those after `after` wait in order.
        self.waiting = self.waiting.split_off(&(after.0 + 1));
        let mut due = after.0 + 1;
        while self.waiting.contains_key(&due) {
            due += 1;
        }
        let deadline = Instant::now() + PULL_WAIT;
        while ((due - after.0 - 1) as usize) < max {
            let until = if due > after.0 + 1 { Instant::now() + LINGER } else { deadline };
            let Some(event) = self.next_event(until).await? else { break };
            if event.position > after {
                self.waiting.insert(event.position.0, event);
            }
            while self.waiting.contains_key(&due) {
                due += 1;
            }
            if self.waiting.len() > MAX_WAITING {
                self.messages = None;
                self.from_start = true;
                return Err(format!(
                    "{MAX_WAITING} events arrived on stream {} while position {} did not; \
                     reading it again from its start",
                    self.settings.stream,
                    after.0 + 1
                ));
            }
        }
        if due == after.0 + 1 {
            self.silence(after).await?;
        }
        let later = self.waiting.split_off(&due.min(after.0 + 1 + max as u64));
        let events: Vec<RecordedEvent> =
            std::mem::replace(&mut self.waiting, later).into_values().collect();
        self.handed = events.last().map_or(after.0, |event| event.position.0);
        Ok(Pulled { behind: self.pending + self.waiting.len() as u64, events })
    }
}
