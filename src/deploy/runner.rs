//! Deploying many nodes, split by idea: [`super::report`] (steps, outcomes, reports, events),
//! [`super::schedule`] (how many at once, when to stop), [`super::execute`] (one node's
//! [`super::program::Program`]); the summary table is the CLI's. Re-exported here so existing
//! paths keep working.

pub use super::report::{Cancel, Event, NodeReport, Outcome, Step, Summary};
pub use super::schedule::{deploy, tailnet_host_keys};
