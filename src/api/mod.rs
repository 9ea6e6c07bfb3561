//! The local HTTP API as both ends see it: the protocol [`types`] and the typed [`client`] that
//! the CLI and the tests use. The server is part of the daemon (`daemon::http`).

pub mod client;
pub mod types;
