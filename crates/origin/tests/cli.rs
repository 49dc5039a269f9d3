//! The real `origin` binary refusing a nonsense configuration: it exits non-zero with the
//! error, before binding anything. The address it is given is held by this test, so a binary
//! that bound first would fail on the bind instead, with another message.

use std::net::TcpListener;
use std::process::Command;

#[test]
fn a_bad_value_exits_non_zero_with_the_error_before_binding() {
    let held = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let listen = held.local_addr().expect("its address").to_string();
    let root = tempfile::tempdir().expect("temp dir");
    for (args, message) in [
        (
            &["--max-connections", "0"][..],
            "max_connections and max_connections_per_address must be at least 1",
        ),
        (
            &["--max-header-bytes", "100"],
            "max_header_bytes must be at least 8192",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_origin"))
            .arg("--root")
            .arg(root.path())
            .args(["--listen", &listen, "--workers", "1"])
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .output()
            .expect("run the origin binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(
            !stderr.contains("cannot listen"),
            "it tried to bind: {stderr}"
        );
        assert!(!stderr.contains("listening"), "it listened: {stderr}");
    }
}
