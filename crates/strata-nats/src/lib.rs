//! Strata events delivered to other services through NATS JetStream.
//!
//! [`JetStreamOutlet`] is an [`Outlet`] for the core's deliveries
//! (`ProjectionRunner::spawn_delivery`): each event is published to the stream (created if
//! missing) on the subject `{prefix}.{aggregate_type}.{aggregate_id}`, with the header
//! `Nats-Msg-Id` set to the event id, and a batch counts as delivered once the server has
//! acknowledged every message of it. A batch handed again after a failure or a change of
//! node is dropped by the server as duplicates (within the stream's duplicate window, two
//! minutes by default), and consumers that need certainty drop repeats by message id.
//!
//! [`JetStreamSource`] reads such a stream back for a read replica: the core's `Source`,
//! which a follower (`ProjectionRunner::spawn_follower`) copies into the replica's own store.
//!
//! The message body is whatever the application's encoder makes of the event; the crate
//! depends on the core only and knows no domain.

mod outlet;
mod source;

pub use outlet::{
    DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, Encoder, JetStreamOutlet, NatsError, NatsSettings,
    check_stream_name, check_subject_prefix, subject,
};
pub use source::{Decoder, JetStreamSource};
