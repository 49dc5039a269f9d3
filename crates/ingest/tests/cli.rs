//! The real `ingest` binary refusing a nonsense configuration: it exits non-zero with the
//! flag named, before binding anything. The RTMP address it is given is held by this test, so
//! a binary that bound first would fail on the bind instead, with another message.

use std::net::TcpListener;
use std::process::Command;

#[test]
fn a_bad_value_exits_non_zero_with_the_error_before_binding() {
    let held = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let listen = held.local_addr().expect("its address").to_string();
    for (args, message) in [
        (
            &["--max-connections", "0"][..],
            "--max-connections (INGEST_MAX_CONNECTIONS) must be at least 1, got 0",
        ),
        (
            &["--max-chunk-size", "64"],
            "--max-chunk-size (INGEST_MAX_CHUNK_SIZE) must be at least 128, got 64",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
            .args(["--listen", &listen, "--admin", &listen])
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .output()
            .expect("run the ingest binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid configuration"), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!stderr.contains("binding"), "it tried to bind: {stderr}");
        assert!(!stderr.contains("listening"), "it listened: {stderr}");
    }
}
