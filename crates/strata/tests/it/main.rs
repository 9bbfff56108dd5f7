//! Integration tests of the core on the in-memory store: the contract suites, the command
//! bus and the projection runner.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod bus;
mod counter;
mod delivery;
mod follower;
mod memory_contract;
mod projection;
