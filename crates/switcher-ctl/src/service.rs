//! The run loop: every interval, probe every origin concurrently, decide, apply, update the
//! metrics; serve the admin endpoints beside it; stop on the shutdown future (SIGINT/SIGTERM
//! in the binary, a channel in tests). Library entry [`run`] takes the data plane and the
//! admin listener so tests run it with a fake data plane on port 0 (mini-redis style).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::MissedTickBehavior;

use crate::admin::{self, SharedController};
use crate::config::Config;
use crate::config::join_url;
use crate::control::{ControlError, Controller, OriginConfig};
use crate::dataplane::DataPlane;
use crate::decide::Policy;
use crate::metrics::{Metrics, MetricsError};
use crate::probe::Prober;
use crate::status_page::{self, PageConfig};

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The metrics registry could not be built.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The data plane could not be read or set at start.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The decision policy a config asks for.
pub fn policy(config: &Config) -> Policy {
    Policy {
        required_windows: config.required_windows,
        age_threshold_seconds: config.segment_age_threshold_seconds,
        msn_tolerance: config.msn_tolerance,
        prefer_primary: config.prefer_primary,
        steering: config.policy,
    }
}

/// The origins a config names, in preference order, with their playlist URLs.
pub fn origins(config: &Config) -> Vec<OriginConfig> {
    config
        .origin_list()
        .into_iter()
        .map(|o| OriginConfig {
            url: join_url(&o.base_url, &config.playlist_path()),
            name: o.name,
            weight: o.weight,
        })
        .collect()
}

/// The controller `config` asks for, over `dataplane` (no probe run yet).
pub fn controller(
    config: &Config,
    dataplane: Box<dyn DataPlane>,
) -> Result<Controller, ServiceError> {
    Ok(Controller::new(
        dataplane,
        policy(config),
        Metrics::new()?,
        origins(config),
        config.decision_history,
        config.drain(),
        config.finish(),
    )?)
}

/// Runs until `shutdown` completes. `config` should be validated. `admin_listeners`: a
/// `TcpListener` (read-only admin), or [`admin::Listeners`] with the state-changing socket.
pub async fn run(
    config: Config,
    dataplane: Box<dyn DataPlane>,
    admin_listeners: impl Into<admin::Listeners>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let origins = origins(&config);
    let urls: Vec<String> = origins.iter().map(|o| o.url.clone()).collect();
    let names: Vec<String> = origins.iter().map(|o| o.name.clone()).collect();
    let controller: SharedController = Arc::new(Mutex::new(controller(&config, dataplane)?));
    let prober = Prober::new(
        config.probe_timeout(),
        config.probe_connect_timeout(),
        config.max_playlist_bytes,
        config.probe_segments,
    );

    // Dropping the sender tells the admin server to stop.
    let (stop_admin, mut admin_stopped) = tokio::sync::watch::channel(());
    let admin_listeners = admin_listeners.into();
    let admin_addr = admin_listeners.local_addr();
    let page = PageConfig::from_config(&config);
    status_page::check_assets(&page);
    let admin = tokio::spawn(admin::serve_with(
        admin_listeners,
        controller.clone(),
        Arc::new(page),
        admin::Limits::from_config(&config),
        async move {
            let _ = admin_stopped.changed().await;
        },
    ));
    tracing::info!(
        origins = ?names, policy = config.policy.label(), admin = ?admin_addr,
        interval_s = config.check_interval_seconds, threshold_s = config.segment_age_threshold_seconds,
        required_windows = config.required_windows, "switcher running"
    );

    let mut ticker = tokio::time::interval(config.interval());
    // A probe round longer than the interval (a hung origin until its timeout) delays the
    // next round instead of firing a burst of catch-up rounds.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut announcers = announcers(&config);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        // Every origin at once: a hung origin costs one probe timeout per round, not one per
        // origin.
        let reports = futures_join_all(urls.iter().map(|u| prober.probe(u))).await;
        let mut c = controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A failed flip is logged by the controller and retried by the next window.
        let _ = c.on_window(&reports, SystemTime::now());
        c.refresh_dataplane_metrics();
        let any_healthy = !c.both_bad();
        for a in &mut announcers {
            a.set(
                any_healthy,
                if any_healthy {
                    "an origin is healthy"
                } else {
                    "no healthy origin"
                },
            );
        }
        if c.needs_confirmation() {
            // Confirm a first bad window with the next probe right away: a fault is judged
            // after `required_windows` probes, not `required_windows` intervals.
            ticker.reset_immediately();
        }
    }

    for a in &mut announcers {
        a.set(false, "shutdown");
    }
    drop(stop_admin);
    if let Err(e) = admin.await {
        tracing::error!(error = %e, "admin server task failed");
    }
    let active = controller
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .active_name()
        .to_string();
    // The data plane keeps steering as it was told after we exit (pins outlive us).
    tracing::info!(%active, "switcher stopped; data plane keeps the active origin and table");
    Ok(())
}

/// Runs the futures concurrently on this task and returns their outputs in order (the probes
/// of one round; at most 16, so polling each on every wake-up costs nothing).
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The VIP's announcers when `--announce` is on: one per address of the VIP (both of a
/// dual-stack VIP, announced and withdrawn together), none otherwise.
fn announcers(config: &Config) -> Vec<crate::announce::Announcer> {
    if !config.announce {
        return Vec::new();
    }
    config
        .vip
        .iter()
        .map(|a| crate::announce::Announcer::new(a.ip()))
        .collect()
}
