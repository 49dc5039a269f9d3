//! `cargo xtask bench origin`: our origin against Debian's nginx serving the same files,
//! over plain HTTP and over TLS with the same certificate.
//!
//! Builds nothing: it expects `target/release/origin` (or the binary named by
//! `ORIGIN_BENCH_BIN`), `nginx`, `openssl` and `wrk` on PATH. It writes a ~600 B live
//! playlist and a 1 MiB segment into a fresh temp dir and a self-signed ECDSA P-256
//! certificate, starts two origins (plain and TLS) and one nginx (a plain and a TLS server)
//! on free loopback ports, and runs `wrk -t2 -c50 -d5s` for three cases: plain playlist,
//! plain segment, HTTPS segment. Rounds are interleaved (origin and nginx alternate which goes
//! first) and each case's ratio is the median of `ORIGIN_BENCH_ROUNDS` (default 5) rounds,
//! reported with its range and the machine it ran on. A memory soak follows: a plain and a
//! TLS origin serve a live window of 6 x 1 MiB segments moving over 200, and their RSS is
//! checked against 2 x the window + their RSS at start. Every server is stopped (and the temp
//! dir removed) on every path, errors included.
//!
//! nginx is configured as a fair, HLS-safe peer: `sendfile on`, as many workers as the origin,
//! keep-alive with a high request cap (our origin has none), access log off (ours logs at
//! `warn`), and `open_file_cache off` because it serves stale live playlists. Its TLS server
//! uses the same certificate and key as ours, TLS 1.2 and 1.3 like ours, session tickets off
//! (wrk keeps its connections, so they would not matter).
//!
//! Pinning (default with 2 or more CPUs; `ORIGIN_BENCH_PIN=0` turns it off): each server runs
//! on one CPU of its own (`taskset`; the origin with `--workers 1`, nginx with
//! `worker_processes 1`) and wrk on the others, so the ratio compares what each server does
//! with one core, on any machine. Unpinned, wrk and the servers share the CPUs and the
//! scheduler decides how much each server gets, which moved this ratio from 0.65x to 1.39x
//! between rounds of one run on a loaded 2-core machine.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::util::{Side, TempDir, env_count, free_port, median_f64, pinned, pinning, wait_port};

/// Turns pinning off when `0` (see the module doc).
const PIN_VAR: &str = "ORIGIN_BENCH_PIN";
use anyhow::{Context, Result, bail};

/// wrk threads, connections and duration: fixed so runs are comparable over time.
const WRK_THREADS: &str = "-t2";
const WRK_CONNECTIONS: &str = "-c50";
const WRK_DURATION: &str = "-d5s";
/// Interleaved rounds per case by default (`ORIGIN_BENCH_ROUNDS` overrides).
const DEFAULT_ROUNDS: usize = 5;
/// Segment size: one 2 s segment of a ~4 Mbit/s rendition, whole MPEG-TS packets (the origin
/// refuses a `.ts` that is not, as cut short).
const SEGMENT_BYTES: usize = (1 << 20) / 188 * 188;
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
const SEGMENT_PATH: &str = "/hls/bench/100.ts";

/// One benchmark case: a file over plain HTTP or HTTPS.
struct Case {
    label: &'static str,
    path: &'static str,
    len: usize,
    tls: bool,
}

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
    let rounds = env_count("ORIGIN_BENCH_ROUNDS", DEFAULT_ROUNDS)?.max(1);
    let dir = TempDir::new("origin-bench")?;
    let www = dir.path.join("www");
    let stream_dir = www.join("hls/bench");
    std::fs::create_dir_all(&stream_dir).context("creating the bench stream directory")?;
    let playlist = playlist();
    std::fs::write(stream_dir.join("index.m3u8"), &playlist).context("writing playlist")?;
    let segment: Vec<u8> = (0..SEGMENT_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(stream_dir.join("100.ts"), &segment).context("writing segment")?;
    let (cert, key) = (dir.path.join("cert.pem"), dir.path.join("key.pem"));
    make_certificate(&cert, &key)?;

    let ports = Ports {
        origin: free_port()?,
        origin_tls: free_port()?,
        nginx: free_port()?,
        nginx_tls: free_port()?,
    };
    let origin_command = |port: u16| -> Command {
        let mut command = pinned(&origin_bin, Side::Server, PIN_VAR);
        if pinning(PIN_VAR) {
            command.arg("--workers").arg("1");
        }
        command
            .arg("--root")
            .arg(www.join("hls"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn");
        command
    };
    let origin = Server::spawn("origin", &mut origin_command(ports.origin), &dir.path)?;
    let origin_tls = Server::spawn(
        "origin-tls",
        origin_command(ports.origin_tls)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key),
        &dir.path,
    )?;
    let nginx_conf = dir.path.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        nginx_config(&dir.path, &www, &ports, &cert, &key),
    )
    .context("writing nginx.conf")?;
    let nginx = Server::spawn(
        "nginx",
        pinned(Path::new("nginx"), Side::Server, PIN_VAR)
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-e")
            .arg(dir.path.join("nginx-error.log")),
        &dir.path,
    )?;
    let origin_addr = SocketAddr::from(([127, 0, 0, 1], ports.origin));
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], ports.nginx));
    for (server, addr) in [(&origin, origin_addr), (&nginx, nginx_addr)] {
        wait_ready(server, addr)?;
    }
    // TLS listeners: accepting is readiness enough (both bind before they serve).
    wait_port(ports.origin_tls).context("origin TLS listener")?;
    wait_port(ports.nginx_tls).context("nginx TLS listener")?;

    let cases = [
        Case {
            label: "playlist",
            path: PLAYLIST_PATH,
            len: playlist.len(),
            tls: false,
        },
        Case {
            label: "segment",
            path: SEGMENT_PATH,
            len: segment.len(),
            tls: false,
        },
        Case {
            label: "segment, HTTPS",
            path: SEGMENT_PATH,
            len: segment.len(),
            tls: true,
        },
    ];
    // results[case] = (origin runs, nginx runs)
    let mut results: Vec<(Vec<WrkResult>, Vec<WrkResult>)> =
        cases.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for round in 0..rounds {
        for (case, result) in cases.iter().zip(&mut results) {
            let (scheme, ours, theirs) = if case.tls {
                ("https", ports.origin_tls, ports.nginx_tls)
            } else {
                ("http", ports.origin, ports.nginx)
            };
            let url = |port: u16| format!("{scheme}://127.0.0.1:{port}{}", case.path);
            // Alternate who goes first, so neither always runs on a warmer (or busier) machine.
            let origin_first = round % 2 == 0;
            let origin_server = if case.tls { &origin_tls } else { &origin };
            for ours_now in [origin_first, !origin_first] {
                if ours_now {
                    result.0.push(
                        measured(origin_server, &url(ours))
                            .with_context(|| format!("wrk against origin, {}", case.label))?,
                    );
                } else {
                    result.1.push(
                        measured(&nginx, &url(theirs))
                            .with_context(|| format!("wrk against nginx, {}", case.label))?,
                    );
                }
            }
        }
    }
    drop(origin);
    drop(origin_tls);
    drop(nginx);
    let soak = soak(&origin_bin, &cert, &key, &dir.path).context("memory soak")?;

    let _ = writeln!(
        out,
        "## origin vs nginx (`wrk {WRK_THREADS} {WRK_CONNECTIONS} {WRK_DURATION}`, loopback, \
         {rounds} interleaved rounds)\n"
    );
    let _ = writeln!(out, "Machine: {}.\n", machine());
    let _ = writeln!(
        out,
        "| case | size | origin req/s (median) | nginx req/s (median) | origin/nginx median | range | server CPU µs/request, origin / nginx (median) | errors (origin/nginx) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|---|");
    for (case, (ours, theirs)) in cases.iter().zip(&results) {
        let ratios: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(o, n)| o.requests_per_sec / n.requests_per_sec)
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let rps =
            |runs: &[WrkResult]| median_f64(runs.iter().map(|r| r.requests_per_sec).collect());
        let errors = |runs: &[WrkResult]| runs.iter().map(|r| r.errors).sum::<u64>();
        let cpu = |runs: &[WrkResult]| {
            median_f64(
                runs.iter()
                    .map(|r| r.cpu_seconds / r.requests as f64 * 1e6)
                    .collect(),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} B | {:.0} | {:.0} | {:.2} | {low:.2}-{high:.2} | {:.1} / {:.1} | {} / {} |",
            case.label,
            case.len,
            rps(ours),
            rps(theirs),
            median_f64(ratios.clone()),
            cpu(ours),
            cpu(theirs),
            errors(ours),
            errors(theirs),
        );
    }
    let placement = if pinning(PIN_VAR) {
        "Pinned: each server on CPU 0 alone (origin `--workers 1`, nginx `worker_processes 1`), \
         wrk on the other CPUs."
    } else {
        "Unpinned (`ORIGIN_BENCH_PIN=0`): wrk and the servers share the machine's cores \
         (origin one event loop per core, nginx `worker_processes auto`)."
    };
    let _ = writeln!(
        out,
        "\nEach ratio is origin/nginx within one round (same minute, same machine load); the \
         median and range are over the rounds. Server CPU is user+system time of the server's \
         processes (nginx: master and workers) during the run, per request: unlike req/s it \
         does not depend on how much of a shared machine the server got. {placement} \
         nginx: sendfile on, tcp_nopush on, keepalive (100000 requests), \
         access_log off, open_file_cache off; TLS: same ECDSA P-256 certificate as the origin, \
         TLSv1.2+1.3, session tickets off. origin: defaults otherwise (sendfile for plain \
         HTTP/1.1 bodies, segment cache for TLS/h2, playlists revalidated by statx), \
         RUST_LOG=warn."
    );
    soak.report(out);
    Ok(())
}

/// Segments the memory soak goes through, and how many stay on disk (the live window).
const SOAK_SEGMENTS: usize = 200;
const SOAK_WINDOW: usize = 6;
/// Fetches of each new segment per protocol (viewers).
const SOAK_VIEWERS: usize = 2;
/// RSS is sampled after this many segments, and after the last.
const SOAK_SAMPLE_EVERY: usize = 50;

/// RSS of a plain and a TLS origin over a live window that moves (see [`soak`]).
struct Soak {
    /// RSS (KiB) of each origin before any request: the fixed base.
    base_kib: (u64, u64),
    /// (segments so far, plain origin RSS KiB, TLS origin RSS KiB).
    samples: Vec<(usize, u64, u64)>,
}

impl Soak {
    fn report(&self, out: &mut String) {
        let window_kib = (SOAK_WINDOW * SEGMENT_BYTES / 1024) as u64;
        let _ = writeln!(
            out,
            "\n### origin RSS over a moving live window ({SOAK_SEGMENTS} segments of 1 MiB, \
             window {SOAK_WINDOW}, each new segment fetched {SOAK_VIEWERS}x over plain HTTP and \
             {SOAK_VIEWERS}x over HTTPS (curl), then the one {SOAK_WINDOW} behind deleted)\n"
        );
        let _ = writeln!(out, "| segments | plain origin RSS | TLS origin RSS |");
        let _ = writeln!(out, "|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| 0 (base) | {} KiB | {} KiB |",
            self.base_kib.0, self.base_kib.1
        );
        for (segments, plain, tls) in &self.samples {
            let _ = writeln!(out, "| {segments} | {plain} KiB | {tls} KiB |");
        }
        if let Some((_, plain, tls)) = self.samples.last() {
            let bound = |base: u64| 2 * window_kib + base;
            let verdict = |rss: u64, base: u64| if rss <= bound(base) { "met" } else { "NOT met" };
            let _ = writeln!(
                out,
                "\nTarget: RSS <= 2 x window ({window_kib} KiB) + base: plain {plain} <= {} KiB \
                 {}, TLS {tls} <= {} KiB {}.",
                bound(self.base_kib.0),
                verdict(*plain, self.base_kib.0),
                bound(self.base_kib.1),
                verdict(*tls, self.base_kib.1),
            );
        }
    }
}

/// Runs a plain and a TLS origin over a live stream of [`SOAK_SEGMENTS`] segments: each is
/// renamed into place, fetched by [`SOAK_VIEWERS`] viewers per protocol, and the segment
/// [`SOAK_WINDOW`] behind it deleted, as the packager does. Samples both origins' RSS.
fn soak(origin_bin: &Path, cert: &Path, key: &Path, dir: &Path) -> Result<Soak> {
    let root = dir.join("soak");
    let live = root.join("live");
    std::fs::create_dir_all(&live).context("creating the soak directory")?;
    let (plain_port, tls_port) = (free_port()?, free_port()?);
    let start = |name: &'static str, port: u16, tls: bool| {
        let mut command = Command::new(origin_bin);
        command
            .arg("--root")
            .arg(&root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn");
        if tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        Server::spawn(name, &mut command, dir)
    };
    let plain = start("soak-origin", plain_port, false)?;
    let tls = start("soak-origin-tls", tls_port, true)?;
    wait_port(plain_port)?;
    wait_port(tls_port)?;
    let rss = |server: &Server| super::util::rss_kib(server.child.id());
    let base_kib = (rss(&plain)?, rss(&tls)?);
    let mut samples = Vec::new();
    let mut body: Vec<u8> = (0..SEGMENT_BYTES).map(|i| (i % 253) as u8).collect();
    for i in 0..SOAK_SEGMENTS {
        // Each segment distinct, written whole then renamed in (the packager's way).
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tmp = live.join(".tmp");
        std::fs::write(&tmp, &body).context("writing a soak segment")?;
        std::fs::rename(&tmp, live.join(format!("s{i}.ts"))).context("renaming it in")?;
        let path = format!("/hls/live/s{i}.ts");
        for _ in 0..SOAK_VIEWERS {
            let got = get_plain(plain_port, &path)?;
            let got_tls = get_curl(&format!("https://127.0.0.1:{tls_port}{path}"))?;
            if got != SEGMENT_BYTES || got_tls != SEGMENT_BYTES {
                bail!("soak segment {i}: got {got} B plain, {got_tls} B HTTPS");
            }
        }
        if i >= SOAK_WINDOW {
            std::fs::remove_file(live.join(format!("s{}.ts", i - SOAK_WINDOW)))
                .context("deleting the segment that left the window")?;
        }
        if (i + 1) % SOAK_SAMPLE_EVERY == 0 || i + 1 == SOAK_SEGMENTS {
            samples.push((i + 1, rss(&plain)?, rss(&tls)?));
        }
    }
    Ok(Soak { base_kib, samples })
}

/// GET over plain HTTP/1.1 on a fresh connection; the body length of a 200.
fn get_plain(port: u16, path: &str) -> Result<usize> {
    let response = test_kit::http::get(&format!("http://127.0.0.1:{port}{path}"))
        .with_context(|| format!("GET {path}"))?;
    if response.status != 200 {
        bail!("GET {path}: status {}", response.status);
    }
    Ok(response.body.len())
}

/// GET over HTTPS with curl (no certificate check: the bench's own self-signed one); the
/// body length of a 200.
fn get_curl(url: &str) -> Result<usize> {
    let output = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.split_once(' ') {
        Some(("200", size)) => Ok(size.trim().parse()?),
        _ => bail!("curl {url}: {text}"),
    }
}

/// The four loopback ports of a run.
struct Ports {
    origin: u16,
    origin_tls: u16,
    nginx: u16,
    nginx_tls: u16,
}

/// CPU model and core count, so that a figure is never read as another machine's.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

/// A self-signed ECDSA P-256 certificate for `localhost` (wrk does not verify it).
fn make_certificate(cert: &Path, key: &Path) -> Result<()> {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl (apt-get install openssl)")?;
    if !status.success() {
        bail!("openssl could not make the bench certificate");
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// A live media playlist of about [`PLAYLIST_TARGET_BYTES`]: 6 segments, each with its
/// PROGRAM-DATE-TIME, as the packager writes them.
fn playlist() -> String {
    // The packager's own playlist writer, so the bench serves what production serves.
    let mut window = packager::playlist::Playlist::new(2, 6);
    // 2025-01-01T00:00:00Z.
    const START_MS: u64 = 1_735_689_600_000;
    for (i, msn) in (95..101).enumerate() {
        window.push(packager::playlist::SegmentInfo {
            msn,
            duration_ms: 2000,
            pdt_ms: START_MS + 2000 * i as u64,
            discontinuity: false,
            discontinuity_sequence: 0,
        });
    }
    let mut text = window.render();
    while text.len() < PLAYLIST_TARGET_BYTES {
        text.push_str("#\n");
    }
    text
}

fn nginx_config(dir: &Path, www: &Path, ports: &Ports, cert: &Path, key: &Path) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
worker_processes {workers};
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
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    types {{
        application/vnd.apple.mpegurl m3u8;
        video/mp2t ts;
    }}
    server {{
        listen 127.0.0.1:{plain};
        listen 127.0.0.1:{tls} ssl;
        root {www};
        location ~ \.m3u8$ {{ add_header Cache-Control "no-cache"; }}
        location ~ \.ts$ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    }}
}}
"#,
        www = www.display(),
        cert = cert.display(),
        key = key.display(),
        plain = ports.nginx,
        tls = ports.nginx_tls,
        workers = if pinning(PIN_VAR) { "1" } else { "auto" },
    )
}

/// One wrk run against `server`, with the CPU time the server's processes spent meanwhile.
fn measured(server: &Server, url: &str) -> Result<WrkResult> {
    let before = tree_cpu_seconds(server.child.id())?;
    let mut result = wrk(url)?;
    result.cpu_seconds = tree_cpu_seconds(server.child.id())? - before;
    Ok(result)
}

/// User + system CPU seconds of process `pid` and its direct children (nginx's workers),
/// from /proc/PID/stat (fields 14 and 15, in clock ticks).
pub(super) fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(name) = entry?.file_name().into_string() else {
            continue;
        };
        let Ok(candidate) = name.parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{candidate}/stat")) else {
            continue; // exited meanwhile
        };
        // The command name (field 2) may hold spaces: fields are counted after its ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        if candidate == pid || field(4) == Some(u64::from(pid)) {
            ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
        }
    }
    Ok(ticks as f64 / ticks_per_second)
}

/// One wrk run's figures.
pub(super) struct WrkResult {
    /// Requests per second.
    pub(super) requests_per_sec: f64,
    /// Requests completed ("N requests in ...").
    pub(super) requests: u64,
    /// Filled by [`measured`]: the server's CPU seconds during the run.
    pub(super) cpu_seconds: f64,
    #[allow(dead_code)] // parsed and tested; the report shows requests/s
    bytes_per_sec: f64,
    /// Socket errors plus non-2xx/3xx responses.
    pub(super) errors: u64,
}

fn wrk(url: &str) -> Result<WrkResult> {
    let output = pinned(Path::new("wrk"), Side::Load, PIN_VAR)
        .args([WRK_THREADS, WRK_CONNECTIONS, WRK_DURATION])
        .arg(url)
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

pub(super) fn parse_wrk(text: &str) -> Result<WrkResult> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
    };
    let requests_per_sec: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    // "  123456 requests in 5.00s, 1.2GB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .context("no request count")?
        .0
        .parse()?;
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
        requests,
        cpu_seconds: 0.0,
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
    let url = format!("http://{addr}{PLAYLIST_PATH}");
    if test_kit::wait::try_wait_until(READY_TIMEOUT, || {
        test_kit::http::get(&url).is_ok_and(|r| r.status == 200)
    }) {
        return Ok(());
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
            512345 requests in 10.00s, 15.00GB read\n\
            Requests/sec:  51234.56\nTransfer/sec:      1.50GB\n\
            Socket errors: connect 0, read 2, write 0, timeout 1\nNon-2xx or 3xx responses: 3\n";
        let r = parse_wrk(text).expect("parse");
        assert_eq!(r.requests_per_sec, 51234.56);
        assert_eq!(r.requests, 512345);
        assert_eq!(r.bytes_per_sec, 1.5 * 1024.0 * MIB);
        assert_eq!(r.errors, 6);
        assert!((playlist().len() as i64 - PLAYLIST_TARGET_BYTES as i64).abs() < 20);
    }
}
