//! Exit codes of the `strata` binary, in one place.

/// The command did what was asked.
pub const SUCCESS: u8 = 0;
/// The command failed at run time (a store could not be opened, the port is taken).
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap uses the same code for its own errors).
pub const USAGE: u8 = 2;

/// An error and its causes on one line, each said once. Many errors repeat their cause in
/// their own text ("connecting failed: refused", caused by "refused"), which printing the
/// chain would say twice.
pub fn describe(error: &anyhow::Error) -> String {
    let messages: Vec<String> = error.chain().map(ToString::to_string).collect();
    let mut parts: Vec<&str> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let mut own = message.as_str();
        if let Some(next) = messages.get(i + 1)
            && let Some(before) = own.strip_suffix(next.as_str())
            && let Some(before) = before.strip_suffix(": ")
        {
            own = before;
        }
        if !own.is_empty() && parts.last() != Some(&own) {
            parts.push(own);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::other("Connection refused");
        let error = anyhow::Error::new(io)
            .context("error connecting to server: Connection refused")
            .context("error connecting to server")
            .context("cannot open the store");
        assert_eq!(
            describe(&error),
            "cannot open the store: error connecting to server: Connection refused"
        );
        let error =
            anyhow::Error::new(std::io::Error::other("timed out")).context("operation timed out");
        assert_eq!(describe(&error), "operation timed out: timed out", "only whole causes are cut");
    }
}
