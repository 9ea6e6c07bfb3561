//! juju-brd: the backup-and-restore daemon for Juju state-servers.
//!
//! # Layout
//! - [`config`]: the TOML file, strictly parsed; errors name file, key and line.
//! - [`snapshot`]: taking one backup — file capture, hooks, the database dump.
//! - [`db`]: the database engines, one [`db::Engine`] trait (dump, check, restore, leader).
//! - [`archive`]: the archive format — names, metadata, manifest, writer, reader, verify.
//! - [`catalog`]: the archives in a directory and their verification state.
//! - [`daemon`]: the service — one worker, the scheduler, signals, systemd notify.
//! - [`ha`]: which of several state-servers takes a scheduled backup.
//! - [`api`]: the local HTTP API (`types` shared by server and client).
//! - [`retention`]: which archives to keep (pure); [`state`]: what the daemon remembers.
//! - [`metrics`]: Prometheus text.
//! - [`remote`]: off-host copies on S3-compatible storage, and which archive reached where.
//! - [`restore`]: rebuilding a state-server from an archive (plan, then execute, with rollback).
//! - [`schedule`]: when the next backup is due (pure, time passed in).
//! - [`process`]: running hook and dump commands with timeouts and without leaking secrets.
//! - [`agent_conf`]: reading Juju's machine agent config.
//! - [`space`]: free-space rules.
//! - [`cli`]: the `juju-brd` command line; `main` only calls [`cli::run`].

pub mod agent_conf;
pub mod api;
pub mod archive;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
#[doc(hidden)]
pub mod fuzzing;
pub mod ha;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod snapshot;
pub mod space;
pub mod state;
