//! The store between it and the server, a proxy that can cut or freeze the connection at
//! the worst moment: after a COMMIT went out, before its answer came back. An append whose
//! commit happened is answered as written, a hung server is answered within 5 s (as not
//! written only when no COMMIT was sent), and the writer reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use strata::{EventStore, ExpectedVersion, Position, StoreError, StreamId, Version};
use strata_postgres::PgEventStore;
use strata_testkit::sample_event;
use strata_testkit::services::PostgresFixture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fixture;

const PASS: u8 = 0;
/// Forward a COMMIT, then close both sides when its answer (committed or rolled back) comes
/// back.
const CUT_AFTER_COMMIT: u8 = 1;
/// Forward a COMMIT, then forward nothing more either way (and let new connections hang).
const HANG_AFTER_COMMIT: u8 = 2;
/// Forward nothing.
const HANG: u8 = 3;

/// The simple-query message a client sends for `COMMIT`.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
/// The server's answers to it: a `CommandComplete` tagged `COMMIT`, or `ROLLBACK` when an
/// earlier statement of the transaction failed.
const COMMIT_ANSWERS: [&[u8]; 2] = [b"C\0\0\0\x0bCOMMIT\0", b"C\0\0\0\x0dROLLBACK\0"];

struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
}

impl Proxy {
    async fn start(server: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let server = server.to_owned();
        let shared = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(&server).await else { continue };
                tokio::spawn(relay(client, upstream, shared.clone()));
            }
        });
        Proxy { port, mode }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// Relays one connection, obeying the mode.
async fn relay(client: TcpStream, upstream: TcpStream, mode: Arc<AtomicU8>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = upstream.into_split();
    let committed = Arc::new(AtomicU8::new(0));
    let sent = committed.clone();
    let to_server = {
        let mode = mode.clone();
        async move {
            let mut buffer = vec![0_u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                while mode.load(Ordering::SeqCst) == HANG || sent.load(Ordering::SeqCst) == 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let chunk = &buffer[..n];
                let current = mode.load(Ordering::SeqCst);
                let commit = chunk.windows(COMMIT.len()).any(|window| window == COMMIT);
                if commit && current == CUT_AFTER_COMMIT {
                    sent.store(1, Ordering::SeqCst);
                } else if commit && current == HANG_AFTER_COMMIT {
                    sent.store(2, Ordering::SeqCst);
                    // And the server seems gone: new connections hang too.
                    mode.store(HANG, Ordering::SeqCst);
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let to_client = async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        // The end of the previous read, so that an answer split between reads is seen.
        let mut tail = Vec::new();
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut seen = std::mem::take(&mut tail);
            seen.extend_from_slice(&buffer[..n]);
            let answers_commit = COMMIT_ANSWERS
                .iter()
                .any(|answer| seen.windows(answer.len()).any(|window| window == *answer));
            // One byte short of the longest answer, so that no answer is seen twice.
            tail = seen[seen.len().saturating_sub(13)..].to_vec();
            loop {
                match committed.load(Ordering::SeqCst) {
                    // The server answered the COMMIT: the client never hears it. (Answers to
                    // statements sent with the COMMIT, before it, still pass.)
                    1 if answers_commit => return,
                    2 => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ if mode.load(Ordering::SeqCst) == HANG => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => break,
                }
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends both, closing the client's and the server's sockets.
    tokio::select! {
        () = to_server => {}
        () = to_client => {}
    }
}

/// `url` with its host and port replaced by the proxy's.
fn through(proxy: &Proxy, url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, tail) = rest.split_once('/').unwrap();
    let user = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
    format!("{scheme}://{user}127.0.0.1:{}/{tail}", proxy.port)
}

fn server_address(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split_once('/').unwrap().0;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.contains(':') { host.to_owned() } else { format!("{host}:5432") }
}

/// A store on the fixture's schema whose every connection goes through a new proxy.
async fn store_through_proxy(fixture: &PostgresFixture) -> (Proxy, PgEventStore) {
    let proxy = Proxy::start(&server_address(fixture.base_url())).await;
    let url = through(&proxy, fixture.base_url());
    let store = PgEventStore::connect(&url, Some(fixture.schema())).await.unwrap();
    (proxy, store)
}

#[tokio::test]
async fn a_commit_cut_off_before_its_answer_is_found_written_and_answered_so() {
    let Some(fixture) = fixture().await else { return };
    let (proxy, store) = store_through_proxy(&fixture).await;
    let stream = StreamId::new("account", "a1");
    store.append(&stream, ExpectedVersion::NoStream, vec![sample_event(1)]).await.unwrap();

    proxy.set(CUT_AFTER_COMMIT);
    let appended =
        store.append(&stream, ExpectedVersion::Exact(Version(1)), vec![sample_event(2)]).await;
    proxy.set(PASS);
    let appended = appended.expect("the commit happened, so the append is answered as written");
    assert_eq!(appended.version, Version(2));

    let direct = PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
    let events = direct.read_stream(&stream, Version::NONE).await.unwrap();
    assert_eq!(events.len(), 2, "written once");
    // The writer reconnected by itself.
    store.append(&stream, ExpectedVersion::Exact(Version(2)), vec![sample_event(2)]).await.unwrap();
}

#[tokio::test]
async fn a_retried_event_cut_off_at_its_rollback_is_not_answered_as_written() {
    let Some(fixture) = fixture().await else { return };
    let (proxy, store) = store_through_proxy(&fixture).await;
    let event = sample_event(1);
    store
        .append(&StreamId::new("account", "a4"), ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .unwrap();

    // The same event again (a retry), on a stream the writer takes to be new: sent in one
    // round trip, refused by the event id's key, and the answer to its COMMIT lost. The id
    // is stored, but not by this append.
    proxy.set(CUT_AFTER_COMMIT);
    let retried = StreamId::new("account", "a5");
    let again = store.append(&retried, ExpectedVersion::NoStream, vec![event]).await;
    proxy.set(PASS);
    assert!(matches!(again, Err(StoreError::OutcomeUnknown(_))), "{again:?}");

    let direct = PgEventStore::connect(fixture.base_url(), Some(fixture.schema())).await.unwrap();
    assert!(direct.read_stream(&retried, Version::NONE).await.unwrap().is_empty());
    let next = store
        .append(&StreamId::new("account", "a6"), ExpectedVersion::NoStream, vec![sample_event(2)])
        .await
        .unwrap();
    assert_eq!(next.first_position, Position(2), "the log goes on where it was");
}

#[tokio::test]
async fn a_hung_server_is_answered_within_5_s_and_the_writer_recovers_when_it_returns() {
    let Some(fixture) = fixture().await else { return };
    let (proxy, store) = store_through_proxy(&fixture).await;
    let stream = StreamId::new("account", "a2");
    store.append(&stream, ExpectedVersion::NoStream, vec![sample_event(1)]).await.unwrap();

    // Hung before anything of the append reached the server: not written, and said so. (A
    // stream the writer does not know, appended to at any version, is read before its
    // COMMIT is sent; see the next case for a group sent whole.)
    proxy.set(HANG);
    let started = Instant::now();
    let unknown_stream = StreamId::new("account", "a3");
    let refused = store.append(&unknown_stream, ExpectedVersion::Any, vec![sample_event(3)]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    assert!(matches!(refused, Err(StoreError::Backend(_))), "{refused:?}");
    let started = Instant::now();
    let read = store.read_stream(&stream, Version::NONE).await;
    assert!(read.is_err() && started.elapsed() < Duration::from_secs(5), "a read is bounded too");

    // Hung with the COMMIT sent: nobody can tell whether it happened, and the answer says so.
    // (The writer knows the stream again after this append, so it sends the next group in
    // one round trip, COMMIT and all.)
    proxy.set(PASS);
    store.append(&stream, ExpectedVersion::Any, vec![sample_event(5)]).await.unwrap();
    proxy.set(HANG_AFTER_COMMIT);
    let started = Instant::now();
    let unknown = store.append(&stream, ExpectedVersion::Any, vec![sample_event(4)]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    assert!(matches!(unknown, Err(StoreError::OutcomeUnknown(_))), "{unknown:?}");

    proxy.set(PASS);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.append(&stream, ExpectedVersion::Any, vec![sample_event(5)]).await {
            Ok(_) => break,
            Err(error) => assert!(Instant::now() < deadline, "never recovered: {error}"),
        }
    }
    let never_written = store.read_stream(&unknown_stream, Version::NONE).await.unwrap();
    assert!(never_written.is_empty(), "an append answered as not written was written");
}
