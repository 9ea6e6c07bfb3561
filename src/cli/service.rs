//! The service commands: `daemon`, `status`, `check-config`.

use super::*;

pub(super) fn status(cfg: &Config, json: bool) -> Result<ExitCode> {
    let client = crate::api::client::Client::new(&cfg.api.socket);
    let s = runtime()?.block_on(client.status())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("never".to_string(), |t| {
            format!(
                "{} ({} ago)",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                human_age(chrono::Utc::now() - t)
            )
        })
    };
    println!("environment:   {}", s.environment);
    println!("daemon:        juju-brd {}, {}", s.version, s.state);
    if let Some(j) = &s.current_job {
        println!(
            "current job:   {} ({:?}, {} of ~{})",
            j.id,
            j.state,
            human_bytes(j.bytes_done),
            human_bytes(j.bytes_estimated)
        );
    }
    println!("last success:  {}", when(s.last_success));
    println!("last attempt:  {}", when(s.last_attempt));
    if let Some(a) = &s.last_archive {
        println!("last archive:  {a}");
    }
    if let Some(e) = &s.last_error {
        println!("last error:    {e}");
    }
    println!(
        "next run:      {}",
        s.next_run.map_or("none scheduled".into(), |t| t
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string())
    );
    println!(
        "archives:      {} ({} free)",
        s.archive_count,
        human_bytes(s.free_space_bytes)
    );
    let sc = &s.scrub;
    if !sc.enabled {
        println!("scrub:         off");
    } else {
        let next = sc.next_run.map_or("-".into(), |t| {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        });
        match sc.state.as_str() {
            "never" => println!("scrub:         none yet, next {next}"),
            "ok" => println!("scrub:         ok {}, next {next}", when(sc.last_run)),
            _ => {
                println!(
                    "scrub:         FAILED {}, next {next}; last sound {}",
                    when(sc.last_run),
                    when(sc.last_success)
                );
                for d in &sc.damaged {
                    println!("  DAMAGED:     {d}");
                }
                if let Some(e) = &sc.error {
                    println!("  error:       {e}");
                }
            }
        }
    }
    let dr = &s.drill;
    let next = dr.next_run.map_or("not scheduled".into(), |t| {
        format!("next {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
    });
    match &dr.last {
        None => println!("drill:         none yet, {next}"),
        Some(l) if l.passed => println!(
            "drill:         passed {} ({}, restore {:.1}s), {next}",
            when(Some(l.at)),
            l.archive.as_deref().unwrap_or("-"),
            l.restore_seconds.unwrap_or(0.0)
        ),
        Some(l) => println!(
            "drill:         FAILED {}: {}; last passed {}, {next}",
            when(Some(l.at)),
            l.error.as_deref().unwrap_or("unknown"),
            when(dr.last_success)
        ),
    }
    for a in &s.future_dated_archives {
        println!("FUTURE-DATED:  {a} (named after now: was the clock ahead? kept, not counted as newest)");
    }
    for r in &s.remotes {
        let health = match (&r.last_error, r.last_success) {
            (Some(e), _) => format!("FAILING: {e}"),
            (None, Some(_)) => "ok".into(),
            (None, None) => "no copy yet".into(),
        };
        println!(
            "remote {}:  bucket {}, {} pending, last copy {}, {health}",
            r.name,
            r.bucket,
            r.pending,
            when(r.last_success)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn daemon(config_flag: Option<&Path>) -> Result<ExitCode> {
    let path = Config::resolve_path(config_flag);
    let cfg = Config::load(&path)?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let _lock = crate::state::lock(&cfg.state_dir)?;
    let rt = runtime()?;
    let served = rt.block_on(async move {
        let listener = crate::daemon::bind_socket(&cfg.api.socket, cfg.api.socket_mode.0)?;
        let tcp = match (&cfg.api.tcp_listen, &cfg.api.token_file) {
            (Some(addr), Some(token_file)) => {
                let token = crate::daemon::read_token(token_file)?;
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding api.tcp_listen {addr}"))?;
                Some((l, token))
            }
            _ => None,
        };
        let socket = cfg.api.socket.clone();
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let result = crate::daemon::run(path, cfg, listener, tcp, shutdown).await;
        let _ = std::fs::remove_file(&socket);
        Ok::<(), anyhow::Error>(result?)
    });
    // Blocking work that outlived the daemon (see `daemon::run`) must not hold the exit.
    rt.shutdown_timeout(crate::daemon::RUNTIME_SHUTDOWN);
    served?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn check_config(config_flag: Option<&Path>) -> Result<ExitCode> {
    let path = Config::resolve_path(config_flag);
    let cfg = Config::load(&path)?;
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    println!("# {} is valid; effective settings:", path.display());
    print!(
        "{}",
        toml::to_string_pretty(&cfg).context("rendering the config")?
    );
    Ok(ExitCode::SUCCESS)
}
