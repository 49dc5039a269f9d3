//! `ingest-loadgen`: N RTMP players (rtmp::PlayClient) on one URL, for benchmarks.
//! Prints one line per second: connected players, events, audio/video payload bytes
//! received, and milliseconds since start (rates should use `ms`, not the line count: a
//! busy machine delays the ticks).

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
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    for _ in 0..args.seconds {
        tick.tick().await;
        println!(
            "connected={} events={} bytes={} ms={}",
            connected.load(Ordering::Relaxed),
            events.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            start.elapsed().as_millis()
        );
    }
    Ok(())
}
