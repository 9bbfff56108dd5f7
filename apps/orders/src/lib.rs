//! The Strata reference service: customers, products and orders over HTTP, with every part of
//! the framework running for real. The `strata` binary (`src/main.rs`) is a thin shell over
//! this library: [`cli`] parses, [`app`] runs, [`http`] answers.

pub mod app;
pub mod backends;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod domain;
pub mod fuzzing;
pub mod http;
pub mod sagas;
pub mod views;
