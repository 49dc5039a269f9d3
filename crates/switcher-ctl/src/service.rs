//! The run loop: every interval, probe both origins concurrently, decide, apply, update the
//! metrics; serve the admin endpoints beside it; stop on the shutdown future (SIGINT/SIGTERM
//! in the binary, a channel in tests). Library entry [`run`] takes the data plane and the
//! admin listener so tests run it with a fake data plane on port 0 (mini-redis style).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::MissedTickBehavior;

use crate::admin::{self, SharedController};
use crate::config::Config;
use crate::control::{ControlError, Controller};
use crate::dataplane::DataPlane;
use crate::decide::{OriginId, Policy};
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
    }
}

/// Runs until `shutdown` completes. `config` should be validated. `admin_listeners`: a
/// `TcpListener` (read-only admin), or [`admin::Listeners`] with the state-changing socket.
pub async fn run(
    config: Config,
    dataplane: Box<dyn DataPlane>,
    admin_listeners: impl Into<admin::Listeners>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let urls = [config.primary_url(), config.backup_url()];
    let controller: SharedController = Arc::new(Mutex::new(Controller::new(
        dataplane,
        policy(&config),
        Metrics::new()?,
        urls.clone(),
        config.decision_history,
        config.drain(),
        config.finish(),
    )?));
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
        primary = %urls[0], backup = %urls[1], admin = ?admin_addr,
        interval_s = config.check_interval_seconds, threshold_s = config.segment_age_threshold_seconds,
        required_windows = config.required_windows, "switcher running"
    );

    let mut ticker = tokio::time::interval(config.interval());
    // A probe round longer than the interval (a hung origin until its timeout) delays the
    // next round instead of firing a burst of catch-up rounds.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let (primary, backup) = tokio::join!(prober.probe(&urls[0]), prober.probe(&urls[1]));
        let mut c = controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A failed flip is logged by the controller and retried by the next window.
        let _ = c.on_window(&primary, &backup, SystemTime::now());
        c.refresh_dataplane_metrics();
        if c.needs_confirmation() {
            // Confirm a first bad window with the next probe right away: a fault is judged
            // after `required_windows` probes, not `required_windows` intervals.
            ticker.reset_immediately();
        }
    }

    drop(stop_admin);
    if let Err(e) = admin.await {
        tracing::error!(error = %e, "admin server task failed");
    }
    let active: OriginId = controller
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .active();
    // The data plane keeps steering to the active origin after we exit (pins outlive us).
    tracing::info!(%active, "switcher stopped; data plane keeps the active origin");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        // Without signal handlers the process still dies on the default action.
        _ => return std::future::pending().await,
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
}
