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
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
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
    assert!(closed_within(&mut slow, Duration::from_secs(3)), "a head half sent is cut off");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before its timeout");
    // Past the header timeout, the idle keep-alive connection still serves.
    assert!(get(&mut idle, "/health").contains("200"));
    let answered = Instant::now();
    assert!(!closed_within(&mut idle, Duration::from_secs(3)), "idle for less than 4 s");
    assert!(closed_within(&mut idle, Duration::from_secs(3)), "closed once idle for 4 s");
    assert!(answered.elapsed() >= Duration::from_secs(4));
}

#[test]
fn connections_beyond_the_limit_are_closed_as_they_come_and_handles_return_after() {
    let server = Server::spawn(&["--store", "memory", "--max-connections", "8"]);
    let pid = server.child.id();
    let handles = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let resting = handles();
    let mut held: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for stream in &mut held {
        assert!(get(stream, "/health").contains("200"));
    }
    let mut beyond = connect(&server);
    assert!(closed_within(&mut beyond, Duration::from_secs(2)), "the ninth is closed at once");
    drop(beyond);

    // A burst far beyond the limit takes no more than the limit's handles.
    let burst: Vec<TcpStream> = (0..300).map(|_| connect(&server)).collect();
    assert!(handles() <= resting + 8 + 8, "{} handles open during the burst", handles());
    drop(burst);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handles() > resting + 1 {
        assert!(Instant::now() < deadline, "{} handles, {resting} before", handles());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut after = connect(&server);
    assert!(get(&mut after, "/health").contains("200"), "a connection is served again");
    let metrics = {
        write!(after, "GET /metrics HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n")
            .unwrap();
        after.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        let _ = after.read_to_string(&mut text);
        text
    };
    let refused = metrics
        .lines()
        .find(|line| line.starts_with("strata_http_connections_closed_total{reason=\"refused\"}"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no refused count in /metrics:\n{metrics}"));
    assert!(refused >= 1, "refused connections are counted: {refused}");
}
