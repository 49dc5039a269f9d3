//! The signals that ask a service to stop.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM (systemd, `kill`) or SIGINT (Ctrl-C), and logs which.
///
/// If the handlers cannot be installed it never resolves: the signals then keep their
/// default action, which ends the process, so the service is still stoppable, only not
/// gracefully (and the warning says why). Needs a tokio runtime with signal support.
pub async fn shutdown_signal() {
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM/SIGINT; they will end the process without a drain");
            return std::future::pending().await;
        }
    };
    let (mut term, mut int) = (term, int);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
