//! `ingest`: the RTMP ingest server. Parses the CLI, builds the runtime
//! (`--worker-threads`) and calls [`ingest::run`].

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config: ingest::Config = config_schema::parse(&[]);
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("building the tokio runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: ingest::Config) -> anyhow::Result<()> {
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
