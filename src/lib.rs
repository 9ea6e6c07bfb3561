//! juju-brd: the backup-and-restore daemon for Juju state-servers.
//!
//! # Layout
//! Bottom-up: each module uses only those above it in this list (`tests/module_graph.rs` fails
//! on a cycle).
//! - [`process`], [`agent_conf`], [`space`] (free-space rules, `ByteSize`), [`schedule`] (when
//!   the next backup is due; pure), [`logging`], [`metrics`], [`limits`] (upper bounds of config
//!   values): leaves.
//! - [`api`]: the local HTTP API as both ends see it: protocol `types` and the typed `client`.
//! - [`db`]: the database engines, one [`db::Engine`] trait (dump, dump check, restore plan and
//!   load, leader, inventory), one implementation per engine, chosen in `db` alone.
//! - [`ha`]: which of several state-servers takes a scheduled backup (asks the engine).
//! - [`archive`]: the archive format: names, metadata, manifest, writer, reader, verify.
//! - [`state`]: every file in `state_dir` (lock, daemon state, verification cache, ledger).
//! - [`retention`]: which archives to keep (pure).
//! - [`catalog`]: the archives in a directory, their verification state, pruning.
//! - [`remote`]: off-host copies on S3-compatible storage.
//! - [`scrub`]: reading archives again on a cadence, locally and on remotes, to find rot.
//! - [`snapshot`]: taking one backup: file capture, hooks, the database dump.
//! - [`ssh`]: the system's OpenSSH client as a bounded child (host keys always checked).
//! - [`juju_client`]: what Juju's own client records on a workstation (current environment,
//!   state-server addresses), read for `juju-brd backup` run there.
//! - [`agents`]: re-pointing the environment's other machines at this state-server over SSH.
//! - [`restore`]: rebuilding a state-server from an archive (plan, then execute, with rollback).
//! - [`drill`]: restore drills: an archive restored into a scratch root and proven usable.
//! - [`config`]: the TOML file, composed of the sections the modules above own; strictly
//!   parsed into typed values; errors name file, key and line.
//! - [`daemon`]: the service: `http` (the API server), `scheduler`, `worker`, systemd notify.
//! - [`cli`]: the `juju-brd` command line; `main` only calls [`cli::run`].
//!
//! Each module that owns a config section (`[database]` in `db`, `[schedule]` in `schedule`, ...)
//! takes that section, never the whole [`config::Config`]; only `config`, `daemon` and `cli`
//! see the whole file.

pub mod agent_conf;
pub mod agents;
pub mod api;
pub mod archive;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod drill;
#[doc(hidden)]
pub mod fuzzing;
pub mod ha;
pub mod juju_client;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod scrub;
pub mod snapshot;
pub mod space;
pub mod ssh;
pub mod state;
