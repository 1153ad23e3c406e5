//! The steps of a bootstrap, one file each, in the order [`super::bootstrap`] runs them. Each
//! checks before it acts and reports what it did through [`super::run::Run::finish`].

pub(crate) mod address;
pub(crate) mod handover;
pub(crate) mod hardware;
pub(crate) mod host_key;
pub(crate) mod install;
pub(crate) mod join;
pub(crate) mod names;
pub(crate) mod record;
pub(crate) mod secret;
