//! Moved to [`crate::exec`] (processes: [`crate::exec::process`]; SSH and the [`Transport`]
//! trait: [`crate::exec::ssh`]); re-exported here so existing paths keep working.

pub use crate::exec::process::{
    run_process, run_process_in, LocalCommand, NodeLog, ProcError, ProcOutput,
};
pub use crate::exec::ssh::{
    ControlDir, RemoteOutput, SshConfig, SshTarget, SshTransport, Transport, CONTROL_PERSIST_SECS,
    MAX_CONTROL_PATH,
};
pub use crate::secret::Secret;
