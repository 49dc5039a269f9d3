//! `cargo xtask bench origin`: our origin against Debian's nginx serving the same files.
//!
//! Builds nothing: it expects `target/release/origin` (or the binary named by
//! `ORIGIN_BENCH_BIN`), the `nginx` binary and `wrk` on PATH. It writes a ~600 B live
//! playlist and a 1 MiB segment into a fresh temp dir, starts both servers on free loopback
//! ports, runs `wrk -t2 -c50 -d10s` against each for each file, and appends a markdown table
//! to `out`. Both servers are stopped (and the temp dir removed) on every path, errors included.
//!
//! nginx is configured as a fair, HLS-safe peer: `sendfile on`, `worker_processes auto`,
//! keep-alive with a high request cap (our origin has none), access log off (ours logs at
//! `warn`), and `open_file_cache off` because it serves stale live playlists.
//! Caveat: on a 2-core machine wrk and the server share the CPUs, so the figures compare
//! the two servers under the same handicap rather than measuring either's ceiling.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::util::TempDir;
use super::util::free_port;
use anyhow::{Context, Result, bail};

/// wrk threads, connections and duration: fixed so runs are comparable over time.
const WRK_THREADS: &str = "-t2";
const WRK_CONNECTIONS: &str = "-c50";
const WRK_DURATION: &str = "-d10s";
/// Segment size: one 2 s segment of a ~4 Mbit/s rendition.
const SEGMENT_BYTES: usize = 1024 * 1024;
/// Playlist size target: a 6-segment window with PROGRAM-DATE-TIME tags is about this big.
const PLAYLIST_TARGET_BYTES: usize = 600;
/// How long a server may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for readiness or exit.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// URL paths (HLS URL contract: /hls/<stream>/<file>).
const PLAYLIST_PATH: &str = "/hls/bench/index.m3u8";
const SEGMENT_PATH: &str = "/hls/bench/seg100.ts";

/// Runs the benchmark and appends its markdown report to `out`.
pub fn run(workspace: &Path, out: &mut String) -> Result<()> {
    let origin_bin = std::env::var_os("ORIGIN_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/release/origin"));
    if !origin_bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p origin` first",
            origin_bin.display()
        );
    }
    let dir = TempDir::new("origin-bench")?;
    let www = dir.path.join("www");
    let stream_dir = www.join("hls/bench");
    std::fs::create_dir_all(&stream_dir).context("creating the bench stream directory")?;
    let playlist = playlist();
    std::fs::write(stream_dir.join("index.m3u8"), &playlist).context("writing playlist")?;
    let segment: Vec<u8> = (0..SEGMENT_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(stream_dir.join("seg100.ts"), &segment).context("writing segment")?;

    let origin_port = free_port()?;
    let nginx_port = free_port()?;
    let origin = Server::spawn(
        "origin",
        Command::new(&origin_bin)
            .arg("--root")
            .arg(www.join("hls"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{origin_port}"))
            .env("RUST_LOG", "warn"),
        &dir.path,
    )?;
    let nginx_conf = dir.path.join("nginx.conf");
    std::fs::write(&nginx_conf, nginx_config(&dir.path, &www, nginx_port))
        .context("writing nginx.conf")?;
    let nginx = Server::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-e")
            .arg(dir.path.join("nginx-error.log")),
        &dir.path,
    )?;
    let origin_addr = SocketAddr::from(([127, 0, 0, 1], origin_port));
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    for (server, addr) in [(&origin, origin_addr), (&nginx, nginx_addr)] {
        wait_ready(server, addr)?;
    }

    let mut rows = Vec::new();
    for (label, path, len) in [
        ("playlist", PLAYLIST_PATH, playlist.len()),
        ("segment", SEGMENT_PATH, segment.len()),
    ] {
        let ours =
            wrk(origin_addr, path).with_context(|| format!("wrk against origin, {label}"))?;
        let theirs =
            wrk(nginx_addr, path).with_context(|| format!("wrk against nginx, {label}"))?;
        rows.push((label, len, ours, theirs));
    }
    drop(origin);
    drop(nginx);

    let _ = writeln!(
        out,
        "## origin vs nginx (`wrk {WRK_THREADS} {WRK_CONNECTIONS} {WRK_DURATION}`, loopback)\n"
    );
    let _ = writeln!(
        out,
        "| file | size | origin req/s | nginx req/s | origin/nginx | origin MiB/s | nginx MiB/s | errors (origin/nginx) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for (label, len, ours, theirs) in rows {
        let ratio = if theirs.requests_per_sec > 0.0 {
            ours.requests_per_sec / theirs.requests_per_sec
        } else {
            f64::NAN
        };
        let _ = writeln!(
            out,
            "| {label} | {len} B | {:.0} | {:.0} | {ratio:.2} | {:.1} | {:.1} | {} / {} |",
            ours.requests_per_sec,
            theirs.requests_per_sec,
            ours.bytes_per_sec / MIB,
            theirs.bytes_per_sec / MIB,
            ours.errors,
            theirs.errors,
        );
    }
    let _ = writeln!(
        out,
        "\nnginx: sendfile on, worker_processes auto, keepalive (100000 requests), access_log off, \
         open_file_cache off. origin: defaults (one event loop per core, segment cache on, \
         playlists revalidated by statx), RUST_LOG=warn. \
         wrk and the servers share the machine's {} cores.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// A live media playlist of about [`PLAYLIST_TARGET_BYTES`]: 6 segments, each with its
/// PROGRAM-DATE-TIME, as the packager writes them.
fn playlist() -> String {
    let mut text = String::from(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:95\n",
    );
    for (i, sequence) in (95..101).enumerate() {
        let _ = write!(
            text,
            "#EXT-X-PROGRAM-DATE-TIME:2025-01-01T00:00:{:02}.000Z\n#EXTINF:2.000,\nseg{sequence}.ts\n",
            i * 2
        );
    }
    while text.len() < PLAYLIST_TARGET_BYTES {
        text.push_str("#\n");
    }
    text
}

fn nginx_config(dir: &Path, www: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
worker_processes auto;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    # Never on live HLS: it serves stale playlists.
    open_file_cache off;
    types {{
        application/vnd.apple.mpegurl m3u8;
        video/mp2t ts;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location ~ \.m3u8$ {{ add_header Cache-Control "no-cache"; }}
        location ~ \.ts$ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    }}
}}
"#,
        www = www.display()
    )
}

/// One wrk run's figures.
struct WrkResult {
    requests_per_sec: f64,
    bytes_per_sec: f64,
    /// Socket errors plus non-2xx/3xx responses.
    errors: u64,
}

fn wrk(addr: SocketAddr, path: &str) -> Result<WrkResult> {
    let output = Command::new("wrk")
        .args([WRK_THREADS, WRK_CONNECTIONS, WRK_DURATION])
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
    };
    let requests_per_sec: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let bytes_per_sec = parse_binary_size(field("Transfer/sec:").context("no Transfer/sec")?)?;
    let mut errors = field("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse)?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    if let Some(socket) = field("Socket errors:") {
        for part in socket.split(',') {
            errors += part
                .split_whitespace()
                .last()
                .map_or(Ok(0), str::parse::<u64>)?;
        }
    }
    Ok(WrkResult {
        requests_per_sec,
        bytes_per_sec,
        errors,
    })
}

/// wrk prints sizes with binary units: `812.34KB`, `1.02GB`.
fn parse_binary_size(value: &str) -> Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit {
        "" | "B" => 1.0,
        "KB" => 1024.0,
        "MB" => MIB,
        "GB" => MIB * 1024.0,
        "TB" => MIB * MIB,
        other => bail!("unknown wrk unit {other:?}"),
    };
    Ok(number.parse::<f64>()? * scale)
}

/// A child server, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, command: &mut Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child, log })
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master takes its workers down with it only then, and our
        // origin drains. `kill` keeps this std-only.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        eprintln!("{} did not stop on SIGTERM, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(server: &Server, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let request =
                format!("GET {PLAYLIST_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut response = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    bail!(
        "{} not ready on {addr} within {READY_TIMEOUT:?}; log:\n{}",
        server.name,
        server.log_tail()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:1/x\n  2 threads and 50 connections\n\
            Requests/sec:  51234.56\nTransfer/sec:      1.50GB\n\
            Socket errors: connect 0, read 2, write 0, timeout 1\nNon-2xx or 3xx responses: 3\n";
        let r = parse_wrk(text).expect("parse");
        assert_eq!(r.requests_per_sec, 51234.56);
        assert_eq!(r.bytes_per_sec, 1.5 * 1024.0 * MIB);
        assert_eq!(r.errors, 6);
        assert!((playlist().len() as i64 - PLAYLIST_TARGET_BYTES as i64).abs() < 20);
    }
}
