//! Integration tests of the core on the in-memory store: the contract suites, the command
//! bus and the projection runner.

mod bus;
mod counter;
mod memory_contract;
mod projection;
