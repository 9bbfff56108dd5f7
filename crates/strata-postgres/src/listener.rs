//! The listener task: tells this node's followers about commits made by other nodes.
//!
//! It keeps one connection of its own doing `LISTEN strata_events` and raises the store's
//! head to every announced head of its schema (the writer of each node announces its new
//! head once per group commit; see `writer.rs`). Notifications can be missed: the
//! connection may drop, and PostgreSQL does not replay what was sent while nobody
//! listened. So the task also reads `max(position)` after every (re)connection and at a
//! long interval, [`FALLBACK_POLL`]; a lost notification delays followers by at most that,
//! and never loses an event, since followers read by position, not by notification.
//!
//! The head only ever rises here: a notification or poll that arrives late, with an older
//! head than this node's writer already published, changes nothing.

use std::sync::Arc;
use std::time::Duration;

use strata::Position;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};

use crate::database::PgDatabase;
use crate::writer::HEAD;

/// How often the head is read even without notifications.
const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// The first wait before reconnecting after the connection failed; it doubles up to
/// [`MAX_BACKOFF`] while the server stays unreachable.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the listener. It runs until aborted (the store's drop does that).
pub(crate) fn spawn(
    database: &PgDatabase,
    published: Arc<watch::Sender<Position>>,
) -> JoinHandle<()> {
    let config = database.config().clone();
    let schema = database.schema().to_owned();
    tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        loop {
            match listen(&config, &schema, &published, &mut backoff).await {
                Ok(()) => tracing::warn!(%schema, "event listener connection closed; reconnecting"),
                Err(error) => {
                    tracing::warn!(%schema, %error, "event listener failed; reconnecting");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// Raises the published head to `head` if it is higher.
pub(crate) fn raise(published: &watch::Sender<Position>, head: Position) {
    published.send_if_modified(|current| {
        let moved = head > *current;
        if moved {
            *current = head;
        }
        moved
    });
}

/// Listens on one connection until it fails. Resets `backoff` once connected.
async fn listen(
    config: &Config,
    schema: &str,
    published: &watch::Sender<Position>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut notifications) = connect(config).await?;
    client.batch_execute(&format!("LISTEN {}", PgDatabase::NOTIFY_CHANNEL)).await?;
    *backoff = MIN_BACKOFF;
    // Read after LISTEN, so that a commit between the last read and now is not missed.
    poll(&client, published).await?;
    let prefix = format!("{schema}:");
    let mut interval = tokio::time::interval(FALLBACK_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.reset();
    loop {
        tokio::select! {
            notification = notifications.recv() => {
                // `None`: the connection ended, and with it the driver task.
                let Some(notification) = notification else { return Ok(()) };
                let head = notification
                    .payload()
                    .strip_prefix(&prefix)
                    .and_then(|head| head.parse::<u64>().ok());
                // Other schemas of the same database announce on the same channel.
                if let Some(head) = head {
                    raise(published, Position(head));
                }
            }
            _ = interval.tick() => poll(&client, published).await?,
        }
    }
}

async fn poll(
    client: &Client,
    published: &watch::Sender<Position>,
) -> Result<(), tokio_postgres::Error> {
    let head: i64 = client.query_one(HEAD, &[]).await?.get(0);
    raise(published, Position(u64::try_from(head).unwrap_or(0)));
    Ok(())
}

/// Opens the listening connection. Its driver task forwards notifications, and ends (closing
/// the channel) when the connection fails or the client is dropped.
async fn connect(
    config: &Config,
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if sender.send(notification).is_err() {
                        // The listener is gone; dropping the connection closes it.
                        break;
                    }
                }
                Some(Ok(_notice)) => {}
                Some(Err(error)) => {
                    tracing::debug!(%error, "event listener connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    Ok((client, receiver))
}
