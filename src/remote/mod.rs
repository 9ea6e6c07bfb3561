//! Off-host copies on S3-compatible object storage (`[[remote]]`): AWS S3, Ceph RGW, MinIO,
//! Garage.
//!
//! Owns the conversation with one bucket: streamed multipart uploads with bounded memory, reading
//! an upload back by size and SHA-256, listing, downloading and deleting archives. Signing, retries
//! of single requests and the wire protocol are `object_store`'s. Which archives go where, and
//! when, is `replicate`'s.
//!
//! Credentials come from the remote's `credentials_file` or the standard `AWS_*` variables, never
//! from argv, and never appear in errors or logs.

pub mod replicate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::archive::name::{ArchiveName, PART_SUFFIX, SIDECAR_SUFFIX};

/// Parts in flight at once: memory held is about this many parts plus one being filled.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote `{remote}`: {message}")]
    Setup { remote: String, message: String },
    #[error("remote `{remote}`: {what} {key}: {message}")]
    Store {
        remote: String,
        what: &'static str,
        key: String,
        message: String,
    },
    #[error("remote `{remote}`: no object {key}")]
    NotFound { remote: String, key: String },
    #[error("remote `{remote}`: {key} read back wrong: {message}")]
    Mismatch {
        remote: String,
        key: String,
        message: String,
    },
    #[error("remote `{remote}`: local {}: {err}", path.display())]
    Local {
        remote: String,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("remote `{remote}`: {err}")]
    Retention {
        remote: String,
        err: crate::retention::RetentionError,
    },
}

/// An archive as a remote holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteArchive {
    pub name: String,
    #[serde(skip)]
    pub parsed: ArchiveName,
    pub key: String,
    pub size: u64,
    pub started: DateTime<Utc>,
    pub uploaded: DateTime<Utc>,
}

/// One configured bucket.
pub struct Remote {
    pub name: String,
    pub bucket: String,
    prefix: String,
    part_size: usize,
    store: Arc<AmazonS3>,
}

/// Access key, secret and optional session token, however they were found.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// Reads an AWS-style credentials file: `key = value` lines, `[profile]` headers and `#`/`;`
/// comments; the `[default]` profile if there is one, else the first. Errors name the file and
/// the missing key, never a value.
fn parse_credentials(text: &str, path: &Path) -> Result<Credentials, String> {
    let mut profiles: Vec<(String, Vec<(String, String)>)> = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profiles.push((name.trim().to_string(), Vec::new()));
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            profiles
                .last_mut()
                .expect("never empty")
                .1
                .push((k.trim().to_ascii_lowercase(), v));
        }
    }
    let chosen = profiles
        .iter()
        .find(|(n, kv)| n == "default" && !kv.is_empty())
        .or_else(|| profiles.iter().find(|(_, kv)| !kv.is_empty()))
        .map(|(_, kv)| kv)
        .ok_or_else(|| format!("{} holds no credentials", path.display()))?;
    let get = |k: &str| {
        chosen
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let need = |k: &str| {
        get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{} has no `{k}`", path.display()))
    };
    Ok(Credentials {
        access_key_id: need("aws_access_key_id")?,
        secret_access_key: need("aws_secret_access_key")?,
        session_token: get("aws_session_token").filter(|v| !v.is_empty()),
    })
}

fn credentials(rc: &RemoteConfig) -> Result<Credentials, String> {
    if let Some(path) = &rc.credentials_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read credentials_file {}: {e}", path.display()))?;
        return parse_credentials(&text, path);
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        }),
        // Refused rather than letting the client fall back to instance metadata endpoints.
        _ => Err(
            "no credentials: set credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                .into(),
        ),
    }
}

impl Remote {
    pub fn from_config(rc: &RemoteConfig) -> Result<Remote, RemoteError> {
        let setup = |message: String| RemoteError::Setup {
            remote: rc.name.clone(),
            message,
        };
        let creds = credentials(rc).map_err(setup)?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&rc.bucket)
            .with_region(&rc.region)
            .with_access_key_id(creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key)
            .with_virtual_hosted_style_request(!rc.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300))
                    .with_allow_http(
                        rc.endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            )
            // Single requests are retried briefly here; whole uploads are retried by `replicate`
            // with the remote's own backoff, so a dead endpoint fails fast and is reported.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
            });
        if let Some(t) = creds.session_token {
            b = b.with_token(t);
        }
        if let Some(e) = &rc.endpoint {
            b = b.with_endpoint(e.trim_end_matches('/'));
        }
        let store = b.build().map_err(|e| setup(e.to_string()))?;
        Ok(Remote {
            name: rc.name.clone(),
            bucket: rc.bucket.clone(),
            prefix: rc.prefix.trim_matches('/').to_string(),
            part_size: rc.part_size.0.try_into().unwrap_or(usize::MAX),
            store: Arc::new(store),
        })
    }

    /// The object key of a file name under this remote's prefix.
    pub fn key(&self, file_name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(file_name)
        } else {
            ObjectPath::from(format!("{}/{file_name}", self.prefix))
        }
    }

    fn store_err(
        &self,
        what: &'static str,
        key: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> RemoteError {
        let (remote, key) = (self.name.clone(), key.to_string());
        move |e| RemoteError::Store {
            remote,
            what,
            key,
            message: e.to_string(),
        }
    }

    fn local_err(&self, path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError {
        let (remote, path) = (self.name.clone(), path.to_path_buf());
        move |err| RemoteError::Local { remote, path, err }
    }

    /// Streams a local file to `key` as a multipart upload; memory stays at a few parts whatever
    /// the file's size. A failed upload is aborted so no half object is left behind.
    pub async fn upload_file(&self, local: &Path, key: &ObjectPath) -> Result<u64, RemoteError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(self.local_err(local))?;
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(self.store_err("start upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(self.local_err(local)(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(self.store_err("upload", key)(e));
            }
            writer.write(&buf[..n]);
            sent += n as u64;
        }
        writer
            .finish()
            .await
            .map_err(self.store_err("complete upload of", key))?;
        Ok(sent)
    }

    /// Small objects (sidecars) in one request.
    pub async fn put_bytes(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(self.store_err("upload", key))?;
        Ok(())
    }

    /// A small object (a sidecar) whole, refusing one larger than `max` bytes.
    pub async fn get_small(&self, key: &ObjectPath, max: u64) -> Result<Vec<u8>, RemoteError> {
        let got = match self.store.get(key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::NotFound {
                    remote: self.name.clone(),
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(self.store_err("download", key)(e)),
        };
        if got.meta.size > max {
            return Err(RemoteError::Mismatch {
                remote: self.name.clone(),
                key: key.to_string(),
                message: format!("{} bytes, more than a sidecar", got.meta.size),
            });
        }
        let bytes = got.bytes().await.map_err(self.store_err("download", key))?;
        Ok(bytes.to_vec())
    }

    /// Reads `key` back completely and checks its size and SHA-256.
    pub async fn check(
        &self,
        key: &ObjectPath,
        size: u64,
        sha256: &str,
    ) -> Result<(), RemoteError> {
        let mismatch = |message: String| RemoteError::Mismatch {
            remote: self.name.clone(),
            key: key.to_string(),
            message,
        };
        let meta = self
            .store
            .head(key)
            .await
            .map_err(self.store_err("stat", key))?;
        if meta.size != size {
            return Err(mismatch(format!("{} bytes, expected {size}", meta.size)));
        }
        let mut stream = self
            .store
            .get(key)
            .await
            .map_err(self.store_err("download", key))?
            .into_stream();
        let mut h = Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.store_err("download", key))?;
            got += chunk.len() as u64;
            h.update(&chunk);
        }
        let hash = hex::encode(h.finalize());
        if got != size || hash != sha256 {
            return Err(mismatch(format!(
                "read {got} bytes with sha256 {hash}, expected {size} bytes with sha256 {sha256}"
            )));
        }
        Ok(())
    }

    /// Archives under the prefix (names that parse as ours), newest first.
    pub async fn list(&self) -> Result<Vec<RemoteArchive>, RemoteError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut stream = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(self.store_err("list", &prefix.clone().unwrap_or_default()))?;
            let Some(file_name) = meta.location.filename() else {
                continue;
            };
            // Only direct children of the prefix, and only names we recognise as archives.
            if meta.location != self.key(file_name) {
                continue;
            }
            let Some(parsed) = ArchiveName::parse(file_name) else {
                continue;
            };
            out.push(RemoteArchive {
                name: file_name.to_string(),
                key: meta.location.to_string(),
                size: meta.size,
                started: parsed.started_utc(),
                uploaded: meta.last_modified,
                parsed,
            });
        }
        out.sort_by(|a, b| b.parsed.cmp(&a.parsed));
        Ok(out)
    }

    /// Downloads `key` into `dest` through `dest.part` (fsynced, renamed), so an interrupted
    /// download never looks like a finished file.
    pub async fn download(&self, key: &ObjectPath, dest: &Path) -> Result<u64, RemoteError> {
        let mut part = dest.as_os_str().to_owned();
        part.push(PART_SUFFIX);
        let part = PathBuf::from(part);
        let result = async {
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&part)
                .await
                .map_err(self.local_err(&part))?;
            let mut stream = match self.store.get(key).await {
                Ok(r) => r.into_stream(),
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(RemoteError::NotFound {
                        remote: self.name.clone(),
                        key: key.to_string(),
                    })
                }
                Err(e) => return Err(self.store_err("download", key)(e)),
            };
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(self.store_err("download", key))?;
                f.write_all(&chunk).await.map_err(self.local_err(&part))?;
                n += chunk.len() as u64;
            }
            f.sync_all().await.map_err(self.local_err(&part))?;
            tokio::fs::rename(&part, dest)
                .await
                .map_err(self.local_err(dest))?;
            Ok(n)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }

    /// Downloads the archive at `key` and its sidecar (`key.sha256`, when the remote has one)
    /// into `dir`, under the key's file name.
    pub async fn fetch(&self, key: &ObjectPath, dir: &Path) -> Result<PathBuf, RemoteError> {
        let name = key.filename().unwrap_or_default().to_string();
        let dest = dir.join(&name);
        self.download(key, &dest).await?;
        let side_key = ObjectPath::from(format!("{key}{SIDECAR_SUFFIX}"));
        let side_dest = dir.join(format!("{name}{SIDECAR_SUFFIX}"));
        match self.download(&side_key, &side_dest).await {
            Ok(_) => {}
            Err(RemoteError::NotFound { .. }) => {
                // Stale from an earlier download, it would not match; verification goes on without.
                let _ = tokio::fs::remove_file(&side_dest).await;
                tracing::warn!(remote = %self.name, archive = %name, "the remote has no sidecar for it; verifying without one");
            }
            Err(e) => return Err(e),
        }
        Ok(dest)
    }

    /// Deletes an archive and its sidecar.
    pub async fn delete_archive(&self, name: &str) -> Result<(), RemoteError> {
        for file in [name.to_string(), format!("{name}{SIDECAR_SUFFIX}")] {
            let key = self.key(&file);
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_err("delete", &key)(e)),
            }
        }
        Ok(())
    }
}

/// `s3://BUCKET/KEY` -> (bucket, key).
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then(|| (bucket.to_string(), key.to_string()))
}

// The `[[remote]]` config section, owned here; `config` composes the sections and validates them.
/// One S3-compatible bucket that every successful backup is copied to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Short name for `list --remote`, `restore --remote`, logs and metric labels.
    pub name: String,
    /// `http(s)://host:port` of the S3 API (Ceph RGW, MinIO, Garage); omit for AWS itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. "controllers/prod/".
    #[serde(default)]
    pub prefix: String,
    /// Path-style requests (`endpoint/bucket/key`), which most self-hosted servers need.
    #[serde(default)]
    pub path_style: bool,
    /// AWS-style credentials file (`aws_access_key_id`, `aws_secret_access_key`, optional
    /// `aws_session_token`); without it the standard `AWS_*` environment variables are used.
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    /// Upload attempts after the first failure, with exponential backoff.
    #[serde(default = "default_remote_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    #[serde(default = "default_retry_delay", with = "humantime_serde")]
    pub retry_delay: std::time::Duration,
    /// Multipart upload part size; memory used is about two parts.
    #[serde(default = "default_part_size")]
    pub part_size: crate::space::ByteSize,
    /// This remote's own retention policy; without it, the remote keeps every archive.
    #[serde(default)]
    pub retention: Option<crate::retention::RetentionConfig>,
}

fn default_part_size() -> crate::space::ByteSize {
    crate::space::ByteSize(8 << 20)
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_remote_retries() -> u32 {
    4
}

fn default_retry_delay() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

impl RemoteConfig {
    /// Checks one remote; `earlier` are the remotes before it (names must be unique).
    pub fn validate(
        &self,
        _index: usize,
        earlier: &[RemoteConfig],
    ) -> Result<(), (&'static str, String)> {
        let n = &self.name;
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(("name", format!("`{n}` must be letters, digits, `-` or `_`")));
        }
        if earlier.iter().any(|r| &r.name == n) {
            return Err(("name", format!("`{n}` names two remotes")));
        }
        let b = &self.bucket;
        if !(3..=63).contains(&b.len())
            || !b
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err((
                "bucket",
                format!("`{b}` is not a bucket name (3-63 letters, digits, `.`, `-`)"),
            ));
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err((
                    "endpoint",
                    format!("`{e}` must start with http:// or https://"),
                ));
            }
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|p| p == "..") {
            return Err(("prefix", "must be relative, without `..`".into()));
        }
        if self.part_size.0 < 5 << 20 {
            return Err(("part_size", "S3 needs parts of at least 5MiB".into()));
        }
        if self.part_size.0 > 5 << 30 {
            return Err(("part_size", "S3 takes parts of at most 5GiB".into()));
        }
        if self.retries > crate::limits::MAX_RETRIES {
            return Err((
                "retries",
                format!(
                    "{} is more than the maximum of {}",
                    self.retries,
                    crate::limits::MAX_RETRIES
                ),
            ));
        }
        crate::limits::check_duration(
            "retry_delay",
            self.retry_delay,
            crate::limits::RETRY_DELAY_MAX,
        )?;
        if self
            .retention
            .as_ref()
            .is_some_and(|r| *r == crate::retention::RetentionConfig::default())
        {
            return Err((
                "retention",
                "an empty policy would delete every archive; omit it to keep all".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_in_the_aws_format() {
        let p = Path::new("/etc/juju-brd/s3.cred");
        let c = parse_credentials(
            "# offsite\n[other]\naws_access_key_id = O\naws_secret_access_key = OS\n\n[default]\nAWS_ACCESS_KEY_ID = AK\naws_secret_access_key = \"SK\"\n",
            p,
        )
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK", "SK")
        );
        assert!(c.session_token.is_none());
        let c = parse_credentials(
            "aws_access_key_id=A\naws_secret_access_key=S\naws_session_token=T\n",
            p,
        )
        .unwrap();
        assert_eq!(c.session_token.as_deref(), Some("T"));
        let e = parse_credentials("aws_access_key_id = SECRETISH\n", p)
            .err()
            .unwrap();
        assert!(
            e.contains("aws_secret_access_key") && !e.contains("SECRETISH"),
            "{e}"
        );
        assert!(parse_credentials("# nothing\n", p).is_err());
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("s3://backups/prod/juju-backup-20261124-103507.tar.gz"),
            Some((
                "backups".into(),
                "prod/juju-backup-20261124-103507.tar.gz".into()
            ))
        );
        for bad in ["s3://backups", "s3:///key", "http://x/y", "s3://b/"] {
            assert_eq!(parse_s3_url(bad), None, "{bad}");
        }
    }
}
