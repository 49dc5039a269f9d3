//! `ingest`: the RTMP ingest server. Parses the CLI and calls [`ingest::run`].

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = ingest::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "binding RTMP listener {} (ports < 1024 need privileges; use --listen)",
                config.listen
            )
        })?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    ingest::run(listener, config.clone(), shutdown)
        .await
        .with_context(|| format!("running ingest (admin {})", config.admin))
}
