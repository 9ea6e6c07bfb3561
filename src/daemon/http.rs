//! The daemon's HTTP server: an axum router of short handlers over [`Daemon`]; errors become
//! HTTP statuses in one place ([`ApiError`]). Handlers do their disk work (listing archives,
//! `statvfs`, deleting, reading the ledger) through [`blocking`], never on the runtime.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::Daemon;
use crate::api::types::{
    ErrorBody, JobKind, JobState, StatusResponse, TriggerRequest, TriggerResponse,
};
use crate::archive::name::{ArchiveName, SIDECAR_SUFFIX};
use crate::catalog;
use crate::config::Config;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type Shared = State<Arc<Daemon>>;

/// Runs disk work on the blocking pool (see the daemon module's rule on blocking work).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// The archives in the configured directory, listed on the blocking pool.
async fn archives(cfg: &Arc<Config>) -> Result<Vec<catalog::ArchiveInfo>, ApiError> {
    let cfg = cfg.clone();
    blocking(move || catalog::list(&cfg.archive_dir, &cfg.state_dir).map_err(internal)).await
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/backups", post(trigger).get(list))
        .route("/v1/backups/{name}", get(show).delete(remove))
        .route("/v1/backups/{name}/archive", get(download))
        .route("/v1/backups/{name}/sidecar", get(sidecar))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/status", get(status))
        .route("/v1/prune", post(prune))
        .route("/v1/drills", post(drill))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(read_body_in_time))
        .with_state(daemon)
}

/// How long a client has to send a whole request body (they are small JSON documents).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most a request body is read into memory (axum's default limit, which handlers keep).
const BODY_LIMIT: usize = 2 << 20;

/// Reads the request body before the handler runs, within [`BODY_TIMEOUT`] in total: hyper bounds
/// only the headers, and a per-chunk timeout would let a client trickle a byte every few seconds
/// forever. Too slow: 408, too big: 413, and the connection is closed either way.
async fn read_body_in_time(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, BODY_LIMIT);
    let refuse = |code: StatusCode, message: String| {
        let mut resp = ApiError(code, message).into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => {
            let req = axum::extract::Request::from_parts(parts, Body::from(collected.to_bytes()));
            next.run(req).await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        ),
        Ok(Err(e)) => refuse(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        ),
        Err(_) => refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// The same router behind `Authorization: Bearer TOKEN`, for the optional TCP listener.
///
/// A request without the right token is answered 401 at once, before its body is read, and its
/// connection is closed (`Connection: close`), so an unauthenticated peer holds nothing for long.
pub fn with_bearer_token(router: Router, token: String) -> Router {
    let token = Arc::new(token);
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                let ok = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(bearer_credentials)
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
                if ok {
                    next.run(req).await
                } else {
                    let mut resp = ApiError(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token".into(),
                    )
                    .into_response();
                    let h = resp.headers_mut();
                    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
                    resp
                }
            }
        },
    ))
}

/// The token of an `Authorization` value in the Bearer scheme. The scheme name is
/// case-insensitive (RFC 7235 2.1, RFC 6750 2.1): `bearer`, `BEARER` and `Bearer` all count.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    let token = rest.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct TriggerQuery {
    #[serde(default)]
    wait: bool,
}

async fn trigger(
    State(d): Shared,
    Query(q): Query<TriggerQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: TriggerRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?
    };
    crate::archive::metadata::check_notes(&req.notes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let (job, created) = d.trigger(JobKind::Api, req.notes).ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping".into(),
        )
    })?;
    if q.wait {
        let info = job.finished().await;
        let code = if info.state == JobState::Succeeded {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Ok((code, Json(TriggerResponse { created, job: info })).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(TriggerResponse {
            created,
            job: job.info(),
        }),
    )
        .into_response())
}

/// `POST /v1/drills[?wait=true]` with an optional `{"archive": NAME}`: a restore drill (the
/// newest verified archive by default); single flight among drills, queued behind a backup.
async fn drill(
    State(d): Shared,
    Query(q): Query<TriggerQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: crate::api::types::DrillRequest = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?
    };
    let archive = req.archive.unwrap_or_default();
    if !archive.is_empty() && crate::archive::name::ArchiveName::parse(&archive).is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not an archive name", archive.escape_debug()),
        ));
    }
    let (job, created) = d.trigger(JobKind::Drill, archive).ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping".into(),
        )
    })?;
    // A finished drill is answered 200 whatever it found: its state and report say.
    let (code, info) = if q.wait {
        (StatusCode::OK, job.finished().await)
    } else {
        (StatusCode::ACCEPTED, job.info())
    };
    Ok((code, Json(TriggerResponse { created, job: info })).into_response())
}

async fn list(State(d): Shared) -> Result<Response, ApiError> {
    Ok(Json(archives(&d.config()).await?).into_response())
}

async fn find(d: &Daemon, name: &str) -> Result<catalog::ArchiveInfo, ApiError> {
    // Only names we generate are served: no path tricks can reach another file.
    ArchiveName::parse(name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("`{name}` is not an archive name"),
        )
    })?;
    archives(&d.config())
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no archive `{name}`")))
}

async fn show(State(d): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    let a = find(&d, &name).await?;
    let path = a.path.clone();
    let encryption = d.config().encryption.clone();
    if a.encrypted && encryption.identity_file.is_none() {
        // The daemon holds only public keys: what it can tell is what the sidecar records.
        let path = a.path.clone();
        let listing =
            blocking(move || Ok(crate::archive::sidecar::read(&path).and_then(|(_, l)| l))).await?;
        return Ok(
            Json(serde_json::json!({ "archive": a, "metadata": null, "listing": listing }))
                .into_response(),
        );
    }
    let encrypted = a.encrypted;
    let meta = tokio::task::spawn_blocking(move || {
        let ids = crate::archive::encryption::configured(&encryption, encrypted).map_err(|e| {
            crate::archive::verify::VerifyError {
                path: path.clone(),
                message: e,
            }
        })?;
        crate::archive::verify::read_metadata(&path, ids.as_deref())
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(serde_json::json!({ "archive": a, "metadata": meta })).into_response())
}

async fn download(State(d): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    let a = find(&d, &name).await?;
    let file = tokio::fs::File::open(&a.path).await.map_err(internal)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("valid"),
    );
    headers.insert(header::CONTENT_LENGTH, a.size.into());
    headers.insert(
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{}\"", a.name)
            .parse()
            .map_err(internal)?,
    );
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((headers, body).into_response())
}

/// `GET /v1/backups/{name}/sidecar`: the archive's `NAME.sha256`, as written beside it.
async fn sidecar(State(d): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    let a = find(&d, &name).await?;
    let path = d
        .config()
        .archive_dir
        .join(format!("{}{SIDECAR_SUFFIX}", a.name));
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError(StatusCode::NOT_FOUND, format!("`{name}` has no sidecar"))
        } else {
            internal(e)
        }
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid"),
    );
    Ok((headers, text).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let a = find(&d, &name).await?;
    let cfg = d.config();
    let all = archives(&cfg).await?;
    let newest_verified = catalog::newest_verified(&all, chrono::Utc::now());
    if newest_verified.map(|x| &x.name) == Some(&a.name) && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("`{name}` is the newest verified archive; add ?force=true to delete it anyway"),
        ));
    }
    let sidecar = cfg.archive_dir.join(format!("{name}{SIDECAR_SUFFIX}"));
    blocking(move || {
        std::fs::remove_file(&a.path).map_err(internal)?;
        let _ = std::fs::remove_file(sidecar);
        Ok(())
    })
    .await?;
    tracing::info!(archive = %name, "deleted through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct PruneQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/prune[?dry_run=true]`: retention now, serialised with the worker's own runs.
async fn prune(State(d): Shared, Query(q): Query<PruneQuery>) -> Result<Response, ApiError> {
    let decisions = d.prune(q.dry_run, None).await.map_err(|e| match e {
        catalog::PruneError::Policy(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        other => internal(other),
    })?;
    let decisions = decisions
        .into_iter()
        .map(|x| crate::api::types::PruneDecision {
            name: x.name,
            keep: x.keep,
            reason: x.reason,
        })
        .collect();
    Ok(Json(crate::api::types::PruneResponse {
        dry_run: q.dry_run,
        decisions,
    })
    .into_response())
}

async fn job(State(d): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = d
        .job(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job `{id}`")))?;
    Ok(Json(job.info()).into_response())
}

/// What status and metrics both read from disk: the archives, free space and the remote ledger.
struct DiskView {
    archives: Vec<catalog::ArchiveInfo>,
    free: u64,
    ledger: crate::state::Ledger,
}

async fn disk_view(cfg: &Arc<Config>) -> Result<DiskView, ApiError> {
    let cfg = cfg.clone();
    blocking(move || {
        Ok(DiskView {
            archives: catalog::list(&cfg.archive_dir, &cfg.state_dir).map_err(internal)?,
            free: crate::space::free_and_total(&cfg.archive_dir).map_or(0, |(f, _)| f),
            ledger: crate::state::Ledger::load(&cfg.state_dir),
        })
    })
    .await
}

async fn status(State(d): Shared) -> Result<Response, ApiError> {
    let cfg = d.config();
    let s = d.state();
    let view = disk_view(&cfg).await?;
    let current = d.current_job().map(|j| j.info());
    Ok(Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        environment: cfg.effective_environment(),
        state: match (&current, d.current_drill().map(|j| j.info().state)) {
            (Some(_), _) => "backing-up".into(),
            (None, Some(JobState::Running)) => "drilling".into(),
            _ => "idle".into(),
        },
        last_attempt: s.last_attempt,
        last_success: s.last_success,
        last_archive: s.last_archive,
        last_error: s.last_error,
        next_run: d.next_run(),
        archive_count: view.archives.len(),
        free_space_bytes: view.free,
        current_job: current,
        remotes: remote_status(&d, &cfg, &view),
        future_dated_archives: catalog::future_dated(&view.archives, chrono::Utc::now()),
        scrub: crate::api::types::ScrubStatus {
            enabled: cfg.scrub.enabled(),
            state: match (
                &s.last_scrub,
                s.scrub_damaged.is_empty() && s.scrub_error.is_none(),
            ) {
                (None, _) => "never",
                (Some(_), true) => "ok",
                (Some(_), false) => "failed",
            }
            .into(),
            last_run: s.last_scrub,
            last_success: s.last_scrub_success,
            next_run: d.next_scrub(),
            damaged: s.scrub_damaged.clone(),
            error: s.scrub_error.clone(),
        },
        drill: crate::api::types::DrillStatus {
            scheduled: !cfg.drill.cron.is_empty(),
            next_run: d.next_drill(),
            last: s.last_drill.clone(),
            last_success: s.last_drill_success,
        },
    })
    .into_response())
}

fn remote_status(
    d: &Daemon,
    cfg: &Config,
    view: &DiskView,
) -> Vec<crate::api::types::RemoteStatus> {
    let ledger = &view.ledger;
    cfg.remotes
        .iter()
        .map(|r| {
            let health = ledger.remotes.get(&r.name).cloned().unwrap_or_default();
            crate::api::types::RemoteStatus {
                name: r.name.clone(),
                bucket: r.bucket.clone(),
                last_success: health.last_success,
                last_error: health.last_error,
                last_error_at: health.last_error_at,
                pending: view
                    .archives
                    .iter()
                    .filter(|a| !ledger.has(&a.name, &r.name))
                    .count(),
                upload_failures: d.metrics.remote_failures(&r.name),
            }
        })
        .collect()
}

async fn metrics(State(d): Shared) -> Result<Response, ApiError> {
    let cfg = d.config();
    let view = disk_view(&cfg).await?;
    let gauges: Vec<crate::metrics::RemoteGauge<'_>> = cfg
        .remotes
        .iter()
        .map(|r| crate::metrics::RemoteGauge {
            name: &r.name,
            last_success_unix: view
                .ledger
                .remotes
                .get(&r.name)
                .and_then(|h| h.last_success)
                .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
        })
        .collect();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        d.metrics.render(view.archives.len(), view.free, &gauges),
    )
        .into_response())
}

/// The router in-process (`tower::ServiceExt::oneshot`): every route, its errors included, with
/// no socket and no running worker.
#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const ARCHIVE: &str = "juju-backup-20250102-030405.tar.gz";

    struct Fixture {
        dir: tempfile::TempDir,
        daemon: Arc<Daemon>,
        // Held so queued jobs stay queued (no worker runs in these tests).
        _work: tokio::sync::mpsc::UnboundedReceiver<Arc<super::super::Job>>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let cfg = Config::parse(
            "environment = \"router-test\"\narchive_dir = \"archives\"\nstate_dir = \"state\"\n",
            &path,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("archives")).unwrap();
        let (daemon, work) = Daemon::new(path, cfg, Default::default());
        Fixture {
            dir,
            daemon,
            _work: work,
        }
    }

    async fn call(router: Router, method: Method, uri: &str, body: &str) -> (StatusCode, String) {
        call_with(router, Request::builder().method(method).uri(uri), body).await
    }

    async fn call_with(
        router: Router,
        req: axum::http::request::Builder,
        body: &str,
    ) -> (StatusCode, String) {
        let resp = router
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    #[tokio::test]
    async fn health_status_and_metrics() {
        let f = fixture();
        let r = router(f.daemon.clone());
        assert_eq!(
            call(r.clone(), Method::GET, "/healthz", "").await,
            (StatusCode::OK, "ok\n".into())
        );
        let (code, body) = call(r.clone(), Method::GET, "/v1/status", "").await;
        assert_eq!(code, StatusCode::OK);
        let s = json(&body);
        assert_eq!(s["environment"], "router-test");
        assert_eq!(s["state"], "idle");
        assert_eq!(s["archive_count"], 0);
        let (code, body) = call(r, Method::GET, "/metrics", "").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("juju_brd_archives"), "{body}");
    }

    #[tokio::test]
    async fn triggers_are_single_flight_and_jobs_are_found() {
        let f = fixture();
        let r = router(f.daemon.clone());
        let (code, body) = call(r.clone(), Method::POST, "/v1/backups", "").await;
        assert_eq!(code, StatusCode::ACCEPTED);
        let first = json(&body);
        assert_eq!(first["created"], true);
        let id = first["job"]["id"].as_str().unwrap().to_string();
        let (code, body) = call(
            r.clone(),
            Method::POST,
            "/v1/backups",
            r#"{"notes":"second"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::ACCEPTED);
        let second = json(&body);
        assert_eq!(second["created"], false, "a queued job is reused");
        assert_eq!(second["job"]["id"], id.as_str());
        let (code, body) = call(r.clone(), Method::GET, &format!("/v1/jobs/{id}"), "").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(json(&body)["state"], "queued");
        let (code, body) = call(r, Method::GET, "/v1/jobs/nope", "").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(json(&body)["error"].as_str().unwrap().contains("no job"));
    }

    #[tokio::test]
    async fn bad_trigger_bodies_and_a_stopping_daemon_are_refused() {
        let f = fixture();
        let r = router(f.daemon.clone());
        let (code, body) = call(r.clone(), Method::POST, "/v1/backups", "{not json").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("bad request body"));
        f.daemon
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (code, _) = call(r, Method::POST, "/v1/backups", "").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn archives_are_listed_served_and_deleted_by_generated_name_only() {
        let f = fixture();
        let r = router(f.daemon.clone());
        let path = f.dir.path().join("archives").join(ARCHIVE);
        std::fs::write(&path, b"not really gzip").unwrap();
        std::fs::write(f.dir.path().join("archives/notes.txt"), b"operator's").unwrap();

        let (code, body) = call(r.clone(), Method::GET, "/v1/backups", "").await;
        assert_eq!(code, StatusCode::OK);
        let list = json(&body);
        assert_eq!(list.as_array().unwrap().len(), 1, "{body}");
        assert_eq!(list[0]["name"], ARCHIVE);

        let (code, body) = call(
            r.clone(),
            Method::GET,
            &format!("/v1/backups/{ARCHIVE}/archive"),
            "",
        )
        .await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "not really gzip"));

        // Its sidecar: 404 while there is none, then its text.
        let sidecar = format!("/v1/backups/{ARCHIVE}/sidecar");
        let (code, _) = call(r.clone(), Method::GET, &sidecar, "").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let text = format!("{}  {ARCHIVE}\n", "ab".repeat(32));
        std::fs::write(format!("{}.sha256", path.display()), &text).unwrap();
        let (code, body) = call(r.clone(), Method::GET, &sidecar, "").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, text.as_str()));
        let (code, _) = call(
            r.clone(),
            Method::GET,
            "/v1/backups/..%2Fconfig.toml/sidecar",
            "",
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);

        // A damaged archive's metadata cannot be read: an error, with the reason.
        let (code, body) = call(
            r.clone(),
            Method::GET,
            &format!("/v1/backups/{ARCHIVE}"),
            "",
        )
        .await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json(&body)["error"].as_str().unwrap().is_empty());

        for bad in [
            "notes.txt",
            "..%2Fconfig.toml",
            "juju-backup-20250102-030405.tar.gz.sha256",
        ] {
            let (code, _) = call(r.clone(), Method::GET, &format!("/v1/backups/{bad}"), "").await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{bad}");
            let (code, _) =
                call(r.clone(), Method::DELETE, &format!("/v1/backups/{bad}"), "").await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{bad}");
        }
        let missing = "juju-backup-20240101-000000.tar.gz";
        let (code, _) = call(
            r.clone(),
            Method::GET,
            &format!("/v1/backups/{missing}/archive"),
            "",
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);

        let (code, _) = call(
            r.clone(),
            Method::DELETE,
            &format!("/v1/backups/{ARCHIVE}"),
            "",
        )
        .await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        assert!(!path.exists());
        assert!(f.dir.path().join("archives/notes.txt").exists());
    }

    #[tokio::test]
    async fn the_newest_verified_archive_is_kept_unless_forced() {
        let f = fixture();
        let r = router(f.daemon.clone());
        let path = f.dir.path().join("archives").join(ARCHIVE);
        std::fs::write(&path, b"archive bytes").unwrap();
        crate::state::VerificationCache::record(&f.dir.path().join("state"), &path, true).unwrap();
        let (code, body) = call(
            r.clone(),
            Method::DELETE,
            &format!("/v1/backups/{ARCHIVE}"),
            "",
        )
        .await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert!(json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("newest verified"));
        assert!(path.exists());
        let (code, _) = call(
            r,
            Method::DELETE,
            &format!("/v1/backups/{ARCHIVE}?force=true"),
            "",
        )
        .await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn the_bearer_token_guards_every_route() {
        let f = fixture();
        let r = with_bearer_token(router(f.daemon.clone()), "s3cret".into());
        for (method, uri) in [
            (Method::GET, "/healthz"),
            (Method::GET, "/v1/status"),
            (Method::POST, "/v1/backups"),
            (Method::GET, "/metrics"),
        ] {
            let (code, _) = call(r.clone(), method.clone(), uri, "").await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri} without a token");
            let req = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header("authorization", "Bearer wrong");
            let (code, _) = call_with(r.clone(), req, "").await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri} with a wrong token");
        }
        let req = Request::builder()
            .uri("/healthz")
            .header("authorization", "Bearer s3cret");
        assert_eq!(call_with(r, req, "").await.0, StatusCode::OK);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, want) in [
            ("Bearer s3cret", Some("s3cret")),
            ("bearer s3cret", Some("s3cret")),
            ("BEARER  s3cret ", Some("s3cret")),
            ("bEaReR\ts3cret", Some("s3cret")),
            ("Basic s3cret", None),
            ("Bearers3cret", None),
            ("Bearer ", None),
            ("s3cret", None),
        ] {
            assert_eq!(bearer_credentials(value), want, "{value:?}");
        }
    }
}
