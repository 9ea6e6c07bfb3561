//! The client side of the local API: [`Client`], typed calls over the daemon's Unix socket for
//! `juju-brd backup`, `status` and `prune` and for the tests, on top of [`request`], one raw
//! HTTP/1 exchange.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no juju-brd daemon answers at {}; is it running? (`juju-brd backup --offline` backs up without it)", .0.display())]
    NoDaemon(std::path::PathBuf),
    #[error("talking to the daemon: {0}")]
    Http(String),
    /// The daemon answered with an error status and said why.
    #[error("the daemon refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
}

/// Typed calls to the daemon's API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: std::path::PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends a request and decodes a 2xx answer as `T`; any other status becomes
    /// [`ClientError::Refused`] with the daemon's message. With `lenient`, an answer with an
    /// error status that still decodes as `T` is returned (a failed backup job).
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        lenient: bool,
    ) -> Result<T, ClientError> {
        let (status, bytes) = request(&self.socket, method, path, body).await?;
        if status.is_success() || lenient {
            if let Ok(v) = serde_json::from_slice(&bytes) {
                return Ok(v);
            }
        }
        let message = serde_json::from_slice::<super::types::ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        if status.is_success() {
            return Err(ClientError::Http(format!(
                "unexpected answer ({status}): {message}"
            )));
        }
        Err(ClientError::Refused { status, message })
    }

    /// `POST /v1/backups`; with `wait`, returns when the job has finished (succeeded or not).
    pub async fn trigger(
        &self,
        req: &super::types::TriggerRequest,
        wait: bool,
    ) -> Result<super::types::TriggerResponse, ClientError> {
        self.post_job("/v1/backups", req, wait).await
    }

    /// POSTs `req` to a route that queues a job; with `wait`, the answer comes when it is done.
    async fn post_job(
        &self,
        route: &str,
        req: &impl serde::Serialize,
        wait: bool,
    ) -> Result<super::types::TriggerResponse, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Http(e.to_string()))?;
        let path = if wait {
            format!("{route}?wait=true")
        } else {
            route.to_string()
        };
        self.call(Method::POST, &path, Some(body), wait).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<super::types::StatusResponse, ClientError> {
        self.call(Method::GET, "/v1/status", None, false).await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<super::types::JobInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None, false)
            .await
    }

    /// `POST /v1/drills`; with `wait`, returns when the drill has finished (passed or not).
    pub async fn drill(
        &self,
        req: &super::types::DrillRequest,
        wait: bool,
    ) -> Result<super::types::TriggerResponse, ClientError> {
        self.post_job("/v1/drills", req, wait).await
    }

    /// `GET /v1/backups/{name}/sidecar`: the archive's `NAME.sha256` text (a few hundred bytes;
    /// refused beyond 64 KiB).
    pub async fn sidecar(&self, name: &str) -> Result<String, ClientError> {
        let path = format!("/v1/backups/{name}/sidecar");
        let (status, bytes) = request(&self.socket, Method::GET, &path, None).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<super::types::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        if bytes.len() > 64 << 10 {
            return Err(ClientError::Http(
                "the sidecar is larger than 64 KiB".into(),
            ));
        }
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ClientError::Http("the sidecar is not UTF-8".into()))
    }

    /// `GET /v1/backups/{name}/archive`, handed to `sink` chunk by chunk as it arrives (never
    /// held whole); returns the number of bytes.
    pub async fn download(
        &self,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|_| ClientError::NoDaemon(self.socket.clone()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("/v1/backups/{name}/archive"))
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?
                .to_bytes();
            return Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                sink(&data).map_err(|e| ClientError::Http(format!("writing the archive: {e}")))?;
                total += data.len() as u64;
            }
        }
        Ok(total)
    }

    /// `POST /v1/prune`: retention applied by the daemon (or only reported, with `dry_run`).
    pub async fn prune(&self, dry_run: bool) -> Result<super::types::PruneResponse, ClientError> {
        let path = format!("/v1/prune?dry_run={dry_run}");
        self.call(Method::POST, &path, None, false).await
    }
}

pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|_| ClientError::NoDaemon(socket.to_path_buf()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok((status, bytes))
}
