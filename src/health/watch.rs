//! `health --watch` as a library loop: a sweep every interval, state changes tracked, ntfy
//! alerts on transitions, every result handed to a [`WatchSink`] (the CLI prints; tests
//! record). Printing, colours and the terminal are the sink's business.
//!
//! Without the tailnet's view (tailscaled unreachable) no verdict is fair: the sweep is skipped,
//! the last states are kept and nothing is alerted; the sink hears [`WatchEvent::NoTailnet`].

use super::router::{read_bounded, RouterSource, BACKSTOP};
use super::{sweep, tailnet_view, HealthReport, ProbeOptions, StateTracker, Transition};
use crate::health::alert::{AlertError, Alerter};
use crate::model::Fleet;
use crate::tailscale::Tailscale;
use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime};

/// How to watch.
#[derive(Debug)]
pub struct WatchOptions {
    /// Time from the start of one sweep to the start of the next.
    pub interval: Duration,
    /// Stop after this many sweeps (`None`: until stopped).
    pub count: Option<u64>,
    /// How each sweep probes.
    pub probe: ProbeOptions,
    /// The `tailscale` CLI (`None`: located anew for every sweep).
    pub tailscale: Option<Tailscale>,
    /// Sends ntfy alerts on transitions (`None`: no alerts).
    pub alerter: Option<Alerter>,
    /// Where each sweep reads the router's view, alongside its probes and bounded by the probe
    /// timeout (`None`: not read). It never changes a state or an alert.
    pub router: Option<Box<dyn RouterSource>>,
}

impl WatchOptions {
    /// Every `interval`, until stopped, with the fleet's probe options, no alerts.
    pub fn new(fleet: &Fleet, interval: Duration) -> Self {
        WatchOptions {
            interval,
            count: None,
            probe: ProbeOptions::for_fleet(fleet),
            tailscale: None,
            alerter: None,
            router: None,
        }
    }
}

/// What a watch reports, in order.
#[derive(Debug)]
pub enum WatchEvent<'a> {
    /// Alerts could not be delivered; `pending` stay queued for the next sweep.
    AlertFailed {
        /// Why.
        error: &'a AlertError,
        /// Notifications still queued.
        pending: usize,
    },
    /// A sweep finished.
    Sweep {
        /// When the sweep started.
        at: SystemTime,
        /// The sweep.
        report: &'a HealthReport,
        /// Nodes whose state changed since the previous sweep (all of them on the first).
        transitions: &'a [Transition],
    },
    /// The tailnet's view could not be read: no sweep this time.
    NoTailnet {
        /// When the sweep would have started.
        at: SystemTime,
        /// Why.
        error: String,
    },
}

/// Where a watch's events go. Returning `ControlFlow::Break` stops the watch (e.g. the
/// output was closed).
pub trait WatchSink {
    /// Handles one event.
    fn event(&mut self, event: WatchEvent<'_>) -> ControlFlow<()>;
}

impl<F: FnMut(WatchEvent<'_>) -> ControlFlow<()>> WatchSink for F {
    fn event(&mut self, event: WatchEvent<'_>) -> ControlFlow<()> {
        self(event)
    }
}

/// Sweeps `fleet` every `opts.interval` until `opts.count` sweeps are done, the sink breaks,
/// or `stop` completes (checked between sweeps, so a sweep's output and alerts are never cut
/// short). Returns the number of sweeps attempted (with or without the tailnet's view).
pub async fn watch(
    fleet: &Fleet,
    mut opts: WatchOptions,
    sink: &mut impl WatchSink,
    stop: impl Future<Output = ()>,
) -> u64 {
    let mut tracker = StateTracker::new();
    let mut sweeps = 0u64;
    tokio::pin!(stop);
    loop {
        let started = Instant::now();
        let at = SystemTime::now();
        let flow = match tailnet_view(opts.tailscale.as_ref()).await {
            Err(e) => sink.event(WatchEvent::NoTailnet {
                at,
                error: e.to_string(),
            }),
            Ok(st) => {
                // The router's view is read while the probes run, bounded like one of them (plus
                // a small backstop), so a slow bus never delays a sweep by more than that. Without the
                // tailnet there is no sweep, and nothing is asked of the bus either.
                let limit = opts.probe.timeout + BACKSTOP;
                let router = async {
                    match opts.router.as_mut() {
                        Some(src) => Some(read_bounded(src.as_mut(), limit).await),
                        None => None,
                    }
                };
                let (mut report, view) = tokio::join!(sweep(fleet, Some(&st), &opts.probe), router);
                if let Some(view) = view {
                    let view = view.as_deref().map_err(String::as_str);
                    report.attach_router(view, SystemTime::now());
                }
                let transitions = tracker.update(&report);
                let mut flow = ControlFlow::Continue(());
                if let Some(al) = opts.alerter.as_mut() {
                    al.observe(&transitions);
                    let (_sent, err) = al.flush().await;
                    if let Some(error) = err {
                        flow = sink.event(WatchEvent::AlertFailed {
                            error: &error,
                            pending: al.pending(),
                        });
                    }
                }
                if flow.is_continue() {
                    flow = sink.event(WatchEvent::Sweep {
                        at,
                        report: &report,
                        transitions: &transitions,
                    });
                }
                flow
            }
        };
        sweeps += 1;
        if flow.is_break() || opts.count.is_some_and(|c| sweeps >= c) {
            return sweeps;
        }
        let wait = opts.interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return sweeps,
        }
    }
}
