//! The query parameters of paged lists: `limit` (1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`]
//! when absent), opaque `after` cursors, and RFC 3339 time bounds. A cursor is the key of the last item of a page, hex-encoded so that
//! clients treat it as a token; a cursor this service did not hand out is a 400.

use chrono::{DateTime, Utc};

use crate::problem::Problem;

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;

/// The most items one page may hold.
pub const MAX_LIMIT: usize = 500;

/// Parses `limit`: absent means [`DEFAULT_LIMIT`]; outside 1 to [`MAX_LIMIT`] is a 400.
pub fn limit(raw: Option<&str>) -> Result<usize, Problem> {
    let Some(raw) = raw else { return Ok(DEFAULT_LIMIT) };
    match raw.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(Problem::bad_request(format!(
            "limit must be an integer from 1 to {MAX_LIMIT}; got {raw:?}"
        ))),
    }
}

/// A cursor for the page after the one that ended at `key`.
pub fn cursor(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key a cursor holds; 400 if it is not one [`cursor`] made.
pub fn key_of(cursor: &str) -> Result<String, Problem> {
    let invalid = || {
        Problem::bad_request(format!("after must be a cursor from a previous page; got {cursor:?}"))
    };
    if cursor.is_empty() || !cursor.len().is_multiple_of(2) || cursor.len() > 1024 {
        return Err(invalid());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| cursor.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// Parses an RFC 3339 instant given as `name`.
pub fn instant(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, Problem> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw).map(|at| at.with_timezone(&Utc)).map_err(|_| {
            Problem::bad_request(format!(
                "{name} must be an RFC 3339 time such as 2026-11-27T09:00:00Z; got {raw:?}"
            ))
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        assert_eq!(
            key_of(&cursor("1700000000000000:o-1")).ok().as_deref(),
            Some("1700000000000000:o-1")
        );
        for bad in ["", "abc", "zz", "ff", &"00".repeat(600)] {
            assert_eq!(key_of(bad).err().map(|p| p.status), Some(400), "{bad:?}");
        }
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert_eq!(limit(None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(Some("500")).ok(), Some(500));
        for bad in ["0", "501", "-1", "ten"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
