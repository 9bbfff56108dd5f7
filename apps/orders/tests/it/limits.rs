//! Hostile and careless clients against a real `strata serve`: a request head sent too
//! slowly is cut off while idle keep-alive connections stay until their own timeout, a
//! connection beyond `--max-connections` is closed at once, and file handles return to their
//! resting level after a burst.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::process::Server;

fn connect(server: &Server) -> TcpStream {
    let address = server.base().trim_start_matches("http://");
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream
}

/// Sends a whole `GET path` and reads its answer; the status line.
fn get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: strata\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buffer = [0_u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no whole answer to GET {path}");
        match stream.read(&mut buffer) {
            Ok(0) => panic!("the server closed the connection during GET {path}"),
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("GET {path}: {error}"),
        }
    }
}

/// Whether the server closes `stream` within `within`.
fn closed_within(mut stream: &TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buffer = [0_u8; 256];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_slow_request_head_is_cut_off_while_an_idle_connection_waits_its_own_timeout() {
    let server =
        Server::spawn(&["--store", "memory", "--header-timeout", "1s", "--idle-timeout", "4s"]);
    let mut idle = connect(&server);
    assert!(get(&mut idle, "/health").contains("200"));
    let started = Instant::now();
    let mut slow = connect(&server);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: strata\r\nX-Slow: ").unwrap();
    assert!(closed_within(&slow, Duration::from_secs(3)), "a head half sent is cut off");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before its timeout");
    // Past the header timeout, the idle keep-alive connection still serves.
    assert!(get(&mut idle, "/health").contains("200"));
    let answered = Instant::now();
    assert!(!closed_within(&idle, Duration::from_secs(3)), "idle for less than 4 s");
    assert!(closed_within(&idle, Duration::from_secs(3)), "closed once idle for 4 s");
    assert!(answered.elapsed() >= Duration::from_secs(4));
}

#[test]
fn at_the_cap_an_idle_connection_makes_room_and_only_busy_ones_refuse_newcomers() {
    let server = Server::spawn(&["--store", "memory", "--max-connections", "8"]);
    let pid = server.child.id();
    let handles = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let resting = handles();
    let mut idle: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for stream in &mut idle {
        assert!(get(stream, "/health").contains("200"));
    }
    // Eight idle clients hold every place: a ninth with a request is served all the same.
    let mut ninth = connect(&server);
    assert!(get(&mut ninth, "/health").contains("200"), "an idle connection made room");
    let evicted =
        idle.iter().filter(|stream| closed_within(stream, Duration::from_millis(500))).count();
    assert_eq!(evicted, 1, "exactly one idle connection left");
    drop(idle);
    drop(ninth);

    // Eight connections each with a request under way (a read waiting for a position):
    // nothing can make room, so newcomers are closed as they come, and take no handles.
    let deadline = Instant::now() + Duration::from_secs(5);
    let _busy = loop {
        let mut busy: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
        for stream in &mut busy {
            write!(stream, "GET /orders/x?min_position=1&wait_ms=3000 HTTP/1.1\r\nHost: s\r\n\r\n")
                .unwrap();
        }
        let newcomer = connect(&server);
        if closed_within(&newcomer, Duration::from_secs(1)) {
            break busy;
        }
        assert!(Instant::now() < deadline, "a newcomer was never refused");
    };
    let burst: Vec<TcpStream> = (0..300).map(|_| connect(&server)).collect();
    assert!(handles() <= resting + 8 + 8, "{} handles open during the burst", handles());
    drop(burst);
    drop(_busy);
    // The waiting reads end by themselves within their 3 s, and their handles with them.
    let deadline = Instant::now() + Duration::from_secs(8);
    while handles() > resting + 1 {
        assert!(Instant::now() < deadline, "{} handles, {resting} before", handles());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut after = connect(&server);
    let metrics = {
        write!(after, "GET /metrics HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n")
            .unwrap();
        after.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        let _ = after.read_to_string(&mut text);
        text
    };
    for reason in ["evicted", "refused"] {
        let counted = metrics
            .lines()
            .find(|line| {
                line.starts_with(&format!(
                    "strata_http_connections_closed_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {reason} count in /metrics:\n{metrics}"));
        assert!(counted >= 1, "{reason} connections are counted: {counted}");
    }
}
