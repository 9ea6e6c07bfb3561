//! The axum router: short handlers over [`Daemon`]; errors become HTTP statuses in one place
//! ([`ApiError`]).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::types::{ErrorBody, JobKind, JobState, StatusResponse, TriggerRequest, TriggerResponse};
use crate::archive::name::{ArchiveName, SIDECAR_SUFFIX};
use crate::catalog::{self, VerifyState};
use crate::daemon::Daemon;

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

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/backups", post(trigger).get(list))
        .route("/v1/backups/{name}", get(show).delete(remove))
        .route("/v1/backups/{name}/archive", get(download))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(daemon)
}

/// The same router behind `Authorization: Bearer TOKEN`, for the optional TCP listener.
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
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
                if ok {
                    next.run(req).await
                } else {
                    ApiError(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token".into(),
                    )
                    .into_response()
                }
            }
        },
    ))
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

async fn list(State(d): Shared) -> Result<Response, ApiError> {
    let cfg = d.config();
    let archives = catalog::list(&cfg.archive_dir, &cfg.state_dir).map_err(internal)?;
    Ok(Json(archives).into_response())
}

fn find(d: &Daemon, name: &str) -> Result<catalog::ArchiveInfo, ApiError> {
    // Only names we generate are served: no path tricks can reach another file.
    ArchiveName::parse(name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("`{name}` is not an archive name"),
        )
    })?;
    let cfg = d.config();
    catalog::list(&cfg.archive_dir, &cfg.state_dir)
        .map_err(internal)?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no archive `{name}`")))
}

async fn show(State(d): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    let a = find(&d, &name)?;
    let path = a.path.clone();
    let encryption = d.config().encryption.clone();
    if a.encrypted && encryption.identity_file.is_none() {
        // The daemon holds only public keys: what it can tell is what the sidecar records.
        let listing = crate::archive::sidecar::read(&a.path).and_then(|(_, l)| l);
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
    let a = find(&d, &name)?;
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
    let a = find(&d, &name)?;
    let cfg = d.config();
    let all = catalog::list(&cfg.archive_dir, &cfg.state_dir).map_err(internal)?;
    let newest_verified = all.iter().find(|x| x.verification == VerifyState::Verified);
    if newest_verified.map(|x| &x.name) == Some(&a.name) && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("`{name}` is the newest verified archive; add ?force=true to delete it anyway"),
        ));
    }
    std::fs::remove_file(&a.path).map_err(internal)?;
    let _ = std::fs::remove_file(cfg.archive_dir.join(format!("{name}{SIDECAR_SUFFIX}")));
    tracing::info!(archive = %name, "deleted through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn job(State(d): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = d
        .job(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job `{id}`")))?;
    Ok(Json(job.info()).into_response())
}

async fn status(State(d): Shared) -> Result<Response, ApiError> {
    let cfg = d.config();
    let s = d.state();
    let archives = catalog::list(&cfg.archive_dir, &cfg.state_dir).map_err(internal)?;
    let free = crate::space::free_and_total(&cfg.archive_dir).map_or(0, |(f, _)| f);
    let current = d.current_job().map(|j| j.info());
    Ok(Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        environment: cfg.effective_environment(),
        state: if current.is_some() {
            "backing-up".into()
        } else {
            "idle".into()
        },
        last_attempt: s.last_attempt,
        last_success: s.last_success,
        last_archive: s.last_archive,
        last_error: s.last_error,
        next_run: d.next_run(),
        archive_count: archives.len(),
        free_space_bytes: free,
        current_job: current,
        remotes: remote_status(&d, &cfg, &archives),
    })
    .into_response())
}

fn remote_status(
    d: &Daemon,
    cfg: &crate::config::Config,
    archives: &[catalog::ArchiveInfo],
) -> Vec<crate::api::types::RemoteStatus> {
    let ledger = crate::remote::replicate::Ledger::load(&cfg.state_dir);
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
                pending: archives
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
    let archives = catalog::list(&cfg.archive_dir, &cfg.state_dir).map_err(internal)?;
    let free = crate::space::free_and_total(&cfg.archive_dir).map_or(0, |(f, _)| f);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let ledger = crate::remote::replicate::Ledger::load(&cfg.state_dir);
            let gauges: Vec<crate::metrics::RemoteGauge<'_>> = cfg
                .remotes
                .iter()
                .map(|r| crate::metrics::RemoteGauge {
                    name: &r.name,
                    last_success_unix: ledger
                        .remotes
                        .get(&r.name)
                        .and_then(|h| h.last_success)
                        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
                })
                .collect();
            d.metrics.render(archives.len(), free, &gauges)
        },
    )
        .into_response())
}
