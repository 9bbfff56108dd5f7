//! Exit codes of the `strata` binary, in one place.

/// The command did what was asked.
pub const SUCCESS: u8 = 0;
/// The command failed at run time (a store could not be opened, the port is taken).
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap uses the same code for its own errors).
pub const USAGE: u8 = 2;
