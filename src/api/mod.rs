//! The local HTTP API as both ends see it: the protocol [`types`] and the typed [`client`] that
//! the CLI and the tests use. The server is part of the daemon (`daemon::http`).

pub mod client;
pub mod types;

// The `[api]` config section, owned here; `config` composes the sections and validates them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_socket")]
    pub socket: std::path::PathBuf,
    /// Octal file mode of the socket, as a string ("0660").
    #[serde(default = "default_socket_mode")]
    pub socket_mode: SocketMode,
    /// Optional TCP listener, e.g. "127.0.0.1:17071"; requires `token_file`.
    #[serde(default)]
    pub tcp_listen: Option<String>,
    /// File holding the bearer token for the TCP listener (never on the command line).
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// Needed to bind `tcp_listen` to anything but loopback.
    #[serde(default)]
    pub allow_non_loopback: bool,
}

fn default_socket() -> std::path::PathBuf {
    "/run/juju-brd/juju-brd.sock".into()
}

fn default_socket_mode() -> SocketMode {
    SocketMode(0o660)
}

/// A file mode written in octal as a string ("0660"), at most 0777.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl SocketMode {
    pub fn parse(text: &str) -> Option<SocketMode> {
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(SocketMode)
    }
}

impl serde::Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> serde::Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        SocketMode::parse(&text)
            .ok_or_else(|| serde::de::Error::custom("must be an octal mode like \"0660\""))
    }
}
