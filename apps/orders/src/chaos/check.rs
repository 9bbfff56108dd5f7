//! Holds the clients' ledger against the log and the views once the faults are over:
//! every acknowledged request's events are in the log exactly once, at the position it was
//! told; no refused request left events; and each order's view shows exactly the lines
//! its stream holds.

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde_json::Value;

use super::client::Client;
use super::load::{Answer, Entry, Kind};

/// What one fault's runs came to.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests answered 2xx.
    pub acknowledged: u64,
    /// Acknowledged, but no event of theirs is in the log.
    pub lost: u64,
    /// Requests whose events are in the log more than once.
    pub duplicated: u64,
    /// Answers the log contradicts: a refusal whose events were written, an
    /// acknowledgement at another position, or a view that differs from its stream.
    pub wrong: u64,
    /// Requests with no final answer before the clients gave up.
    pub unresolved: u64,
    /// The first few wrong things, to say what they were.
    pub examples: Vec<String>,
}

impl Tally {
    fn note(&mut self, example: String) {
        if self.examples.len() < 5 {
            self.examples.push(example);
        }
    }

    /// Whether anything was lost, doubled or wrong, or a request never got a final answer
    /// though the service was back (a key stuck for good is a fault too).
    pub fn failed(&self) -> bool {
        self.lost + self.duplicated + self.wrong + self.unresolved > 0
    }
}

/// One event as the check needs it.
struct Logged {
    position: u64,
    stream_type: String,
    stream_id: String,
    event_type: String,
}

/// Reads the whole log through `GET /admin/events`, keeping the chaos requests' events by
/// correlation id; returns them and the head.
async fn read_log(
    client: &Client,
    base: &str,
) -> anyhow::Result<(HashMap<String, Vec<Logged>>, u64)> {
    let mut by_correlation: HashMap<String, Vec<Logged>> = HashMap::new();
    let mut after = 0;
    loop {
        let url = format!("{base}/admin/events?after={after}&limit=500");
        let (status, page) = client.send("GET", &url, &[], None).await?;
        if status != 200 {
            bail!("GET {url} answered {status}: {page}");
        }
        let events = page["events"].as_array().context("a log page without events")?;
        let Some(last) = events.last() else {
            return Ok((by_correlation, after));
        };
        after = last["position"].as_u64().context("an event without a position")?;
        for event in events {
            let text = |field: &Value| field.as_str().unwrap_or_default().to_owned();
            let correlation = text(&event["metadata"]["correlation_id"]);
            if !correlation.starts_with("chaos-") {
                continue;
            }
            by_correlation.entry(correlation).or_default().push(Logged {
                position: event["position"].as_u64().unwrap_or_default(),
                stream_type: text(&event["stream_type"]),
                stream_id: text(&event["stream_id"]),
                event_type: text(&event["type"]),
            });
        }
    }
}

/// Checks `ledger` against the service at `base`, which must be running and healthy.
pub async fn check(client: &Client, base: &str, ledger: &[Entry]) -> anyhow::Result<Tally> {
    let (log, head) = read_log(client, base).await?;
    let mut tally = Tally::default();
    // Lines each order's stream holds, by the log.
    let mut lines_logged: HashMap<&str, usize> = HashMap::new();
    for events in log.values() {
        for event in events {
            if event.stream_type == "order" && event.event_type == "LineAdded" {
                *lines_logged.entry(event.stream_id.as_str()).or_default() += 1;
            }
        }
    }
    let mut placed = Vec::new();
    for entry in ledger {
        let events = log.get(&entry.correlation).map_or(&[][..], Vec::as_slice);
        if events.len() > 1 {
            tally.duplicated += 1;
            tally.note(format!(
                "{} ({:?} {}) is in the log {} times",
                entry.correlation,
                entry.kind,
                entry.order,
                events.len()
            ));
        }
        match &entry.answer {
            Answer::Acknowledged(position) => {
                tally.acknowledged += 1;
                if entry.kind == Kind::Place {
                    placed.push(entry.order.as_str());
                }
                match events.first() {
                    None => {
                        tally.lost += 1;
                        tally.note(format!(
                            "{} ({:?} {}) was acknowledged at {position} but is not in the log",
                            entry.correlation, entry.kind, entry.order
                        ));
                    }
                    Some(event) if event.position != *position => {
                        tally.wrong += 1;
                        tally.note(format!(
                            "{} was acknowledged at {position} but written at {}",
                            entry.correlation, event.position
                        ));
                    }
                    Some(_) => {}
                }
            }
            Answer::Refused(status, detail) => {
                if !events.is_empty() {
                    tally.wrong += 1;
                    tally.note(format!(
                        "{} was refused ({status} {detail}) but written",
                        entry.correlation
                    ));
                }
            }
            Answer::Unresolved(why) => {
                tally.unresolved += 1;
                tally.note(format!("{} got no final answer: {why}", entry.correlation));
            }
        }
    }
    for order in placed {
        let url = format!("{base}/orders/{order}?min_position={head}&wait_ms=20000");
        let (status, view) = client.send("GET", &url, &[], None).await?;
        let shown = view["lines"].as_array().map(Vec::len);
        let logged = lines_logged.get(order).copied().unwrap_or(0);
        if status != 200 || shown != Some(logged) {
            tally.wrong += 1;
            tally.note(format!(
                "order {order}: the log holds {logged} lines, the view answered {status} {view}"
            ));
        }
    }
    Ok(tally)
}
