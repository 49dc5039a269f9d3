//! `ingest`: the RTMP ingest server. Parses the CLI, checks it ([`ingest::Config::validate`],
//! before anything is bound), builds the runtime (`--worker-threads`) and calls [`ingest::run`].

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    service::init_tracing();
    let config = config_schema::parse::<ingest::Config>(&[])
        .validate()
        .context("invalid configuration")?;
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
    ingest::run(listener, config.clone(), service::shutdown_signal())
        .await
        .with_context(|| format!("running ingest (admin {})", config.admin))
}
