//! The local HTTP API: types shared by both ends, the axum server, and the CLI's client.

pub mod client;
pub mod server;
pub mod types;
