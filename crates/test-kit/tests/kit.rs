//! The kit against the real things it wraps: ffmpeg encodes what the publisher builder asks
//! for, the HTTP client reads a chunked answer from a server on 127.0.0.1, namespaces are gone
//! after a drop (needs root, as every namespace test: `cargo xtask test`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use test_kit::netns::{BpfFs, Pair};
use test_kit::wait::{try_poll_until, try_wait_until};
use test_kit::{Publisher, wait_until};

#[test]
fn the_publisher_encodes_h264_and_aac_with_the_asked_gop() {
    let dir = std::env::temp_dir().join(test_kit::netns::unique("pub"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let clip = dir.join("clip.flv");
    Publisher::new(160, 120, 10)
        .seconds(3)
        .fixed_gop(10)
        .encode(&clip);
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name"])
        .args(["-show_entries", "frame=key_frame", "-select_streams", "v"])
        .args(["-of", "csv=p=0"])
        .arg(&clip)
        .output()
        .expect("ffprobe installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let keyframes = text
        .lines()
        .filter(|l| l.split(',').next() == Some("1"))
        .count();
    // 3 s at 10 fps with a keyframe every 10 frames.
    assert_eq!(keyframes, 3, "{text}");
    let codecs = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&clip)
        .output()
        .expect("ffprobe");
    let codecs = String::from_utf8_lossy(&codecs.stdout);
    assert!(
        codecs.contains("h264") && codecs.contains("aac"),
        "{codecs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_publisher_reads_in_real_time_only_when_asked() {
    let args = Publisher::new(320, 240, 30).args("out.flv");
    assert!(!args.iter().any(|a| a == "-re"), "{args:?}");
    let args = Publisher::new(320, 240, 30).realtime().args("out.flv");
    // Once per input: video and audio.
    assert_eq!(args.iter().filter(|a| *a == "-re").count(), 2, "{args:?}");
    assert_eq!(args.last().map(String::as_str), Some("out.flv"));
}

#[test]
fn http_get_decodes_a_chunked_answer_and_any_status_is_an_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(1) {
            let mut conn = conn.expect("accept");
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).expect("head") > 2 {
                line.clear();
            }
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\nnot \r\n5\r\nfound\r\n0\r\n\r\n",
            )
            .expect("answer");
        }
    });
    let r = test_kit::http::get(&format!("http://{addr}/x")).expect("an answer");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "not found");
}

#[test]
fn waits_end_when_the_condition_holds_and_fail_naming_it() {
    let mut n = 0;
    wait_until(Duration::from_secs(5), "the third poll", || {
        n += 1;
        n == 3
    });
    assert_eq!(n, 3);
    assert_eq!(try_poll_until(Duration::from_secs(5), || Some(7)), Some(7));
    assert!(!try_wait_until(Duration::from_millis(30), || false));
    let failed = std::panic::catch_unwind(|| {
        wait_until(Duration::from_millis(30), "what never happens", || false)
    });
    let message = failed.expect_err("a timeout panics");
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(message.contains("what never happens"), "{message}");
}

#[test]
fn namespaces_and_bpffs_are_removed_on_drop() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: `cargo xtask test`"
    );
    let listed = || test_kit::process::sh(&["ip", "netns", "list"]);
    let pair = Pair::new();
    let names = [pair.client.name.clone(), pair.edge.name.clone()];
    // The veth works: a server in the edge namespace answers a client in the other one.
    let edge = format!("{}:8099", test_kit::netns::EDGE_V4);
    let bind = edge.clone();
    pair.edge.run(move || {
        test_kit::keepalive::serve(TcpListener::bind(&bind).expect("bind in edge"), "edge")
    });
    let answer = pair
        .client
        .run(move || test_kit::keepalive::get_once(&edge, "/whoami"))
        .expect("GET across the veth");
    assert_eq!(answer, b"edge");
    let bpf = BpfFs::new();
    let dir = bpf.dir.clone();
    assert!(
        test_kit::process::sh(&["findmnt", "-n", "-t", "bpf", &dir.to_string_lossy()])
            .contains("bpf")
    );
    let during = listed();
    assert!(
        names.iter().all(|n| during.contains(n.as_str())),
        "{during}"
    );
    drop(bpf);
    drop(pair);
    let after = listed();
    assert!(!names.iter().any(|n| after.contains(n.as_str())), "{after}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn what_a_killed_run_left_is_reaped_and_a_live_runs_is_not() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: `cargo xtask test`"
    );
    // An id (mod 100,000) no live process has: the creator of a killed run.
    let live: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .map(|p| p % 100_000)
        .collect();
    let dead = (10_000..100_000u32)
        .rev()
        .find(|n| !live.contains(n))
        .expect("a free id");
    let ns = format!("hx{dead}e{}", std::process::id() % 1000);
    let tmp = std::env::temp_dir().join(format!("hx{dead}www{}", std::process::id() % 1000));
    let sh = test_kit::process::sh;
    sh(&["ip", "netns", "add", &ns]);
    std::fs::create_dir_all(tmp.join("sub")).expect("temp dir");
    // A server the killed run had started, still running in its namespace.
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "600"])
        .spawn()
        .expect("sleep in the namespace");
    // What this (live) process made stays.
    let mine = test_kit::netns::Netns::new("m");
    try_wait_until(Duration::from_secs(5), || {
        sh(&["ip", "netns", "pids", &ns]).trim().lines().count() == 1
    });

    let removed = test_kit::netns::reap_stale();

    let listed = sh(&["ip", "netns", "list"]);
    assert!(!listed.contains(&ns), "{listed}");
    assert!(listed.contains(&mine.name), "{listed}");
    assert!(!tmp.exists(), "{} left", tmp.display());
    assert!(removed.iter().any(|r| r.contains(&ns)), "{removed:?}");
    // The process inside was killed (SIGKILL), not left running.
    let status = server.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status:?}"
    );
}
