//! `ingest-loadgen`: N RTMP players (rtmp::PlayClient) on one URL, for benchmarks.
//! Prints one line per second: connected players, events and bytes received.

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// rtmp://host:port/app/stream
    #[arg(long, env = "LOADGEN_URL")]
    url: String,
    /// Number of players.
    #[arg(long, env = "LOADGEN_PLAYERS", default_value_t = 10)]
    players: usize,
    /// Run this many seconds, then exit.
    #[arg(long, env = "LOADGEN_SECONDS", default_value_t = 30)]
    seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connected = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    for _ in 0..args.players {
        let (url, connected, events, bytes) = (
            args.url.clone(),
            connected.clone(),
            events.clone(),
            bytes.clone(),
        );
        tokio::spawn(async move {
            let mut c = match rtmp::PlayClient::connect(&url, Duration::from_secs(10)).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("connect failed: {e}");
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            while let Ok(Some(ev)) = c.next_event().await {
                events.fetch_add(1, Ordering::Relaxed);
                if let rtmp::PlayEvent::Audio { data, .. } | rtmp::PlayEvent::Video { data, .. } =
                    ev
                {
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            connected.fetch_sub(1, Ordering::Relaxed);
        });
    }
    for _ in 0..args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "connected={} events={} bytes={}",
            connected.load(Ordering::Relaxed),
            events.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
