//! Running things, in one place for deploy, bootstrap and health:
//!
//! - [`process`]: local processes with timeouts, logs and a clean environment;
//! - [`ssh`]: SSH targets, options and the [`ssh::Transport`] trait with its SSH implementation;
//! - [`quote`]: POSIX shell quoting and the check that a value can be passed on at all.
//!
//! Foundation: imports only `secret`.

pub mod process;
pub mod quote;
pub mod ssh;
