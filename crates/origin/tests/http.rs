//! HTTP semantics over real connections: content types, caching headers, 304, ranges, HEAD,
//! CORS, methods, traversal, freshness after rename, cache and metrics.

mod common;

use common::{PLAYLIST, SECRET, SEGMENT_LEN, Server, metric, raw, segment_bytes, symlink};

#[tokio::test]
async fn content_types_and_cache_control() {
    let server = Server::start(|_| {}).await;
    for (path, content_type, cache_control) in [
        (
            "/hls/demo/index.m3u8",
            "application/vnd.apple.mpegurl",
            "no-cache",
        ),
        (
            "/hls/demo/seg1.ts",
            "video/mp2t",
            "public, max-age=31536000, immutable",
        ),
        (
            "/hls/demo/seg1.m4s",
            "video/mp4",
            "public, max-age=31536000, immutable",
        ),
        (
            "/hls/demo/init.mp4",
            "video/mp4",
            "public, max-age=31536000, immutable",
        ),
    ] {
        let r = server.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("cache-control"), Some(cache_control), "{path}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{path}");
        assert!(
            r.header("etag").is_some_and(|e| e.starts_with('"')),
            "{path} has a strong ETag"
        );
        assert!(r.header("last-modified").is_some(), "{path}");
    }
    let playlist = server.get("/hls/demo/index.m3u8").await;
    assert_eq!(playlist.text(), PLAYLIST);
    // Not an HLS type: never served even though it exists under the root.
    let txt = server.get("/hls/demo/notes.txt").await;
    assert_eq!(txt.status, 404);
    assert!(!txt.text().contains("private"));
    let missing = server.get("/hls/demo/nope.ts").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.len() < 64, "404 body is small");
    assert_eq!(missing.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn conditional_get_gives_304() {
    let server = Server::start(|_| {}).await;
    let first = server.get("/hls/demo/index.m3u8").await;
    let etag = first.header("etag").expect("etag").to_string();
    let last_modified = first
        .header("last-modified")
        .expect("last-modified")
        .to_string();

    let by_etag = server
        .request("GET", "/hls/demo/index.m3u8", &[("If-None-Match", &etag)])
        .await;
    assert_eq!(by_etag.status, 304);
    assert!(by_etag.body.is_empty());
    assert_eq!(by_etag.header("etag"), Some(etag.as_str()));
    assert_eq!(by_etag.header("cache-control"), Some("no-cache"));

    let by_date = server
        .request(
            "GET",
            "/hls/demo/seg1.ts",
            &[("If-Modified-Since", &last_modified)],
        )
        .await;
    assert_eq!(by_date.status, 304);

    let other = server
        .request(
            "GET",
            "/hls/demo/index.m3u8",
            &[("If-None-Match", "\"other\"")],
        )
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), PLAYLIST);

    // After the packager replaces the playlist, the old ETag no longer matches.
    server.replace("demo/index.m3u8", b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:2\n");
    let after = server
        .request("GET", "/hls/demo/index.m3u8", &[("If-None-Match", &etag)])
        .await;
    assert_eq!(after.status, 200);
    assert_ne!(after.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn byte_ranges() {
    let server = Server::start(|_| {}).await;
    let data = segment_bytes(SEGMENT_LEN);
    let len = SEGMENT_LEN;
    // Twice each: the first read fills the cache, the second slices the cached body.
    for _ in 0..2 {
        for (range, start, end) in [
            ("bytes=0-99", 0, 99),
            ("bytes=1000-1999", 1000, 1999),
            ("bytes=-500", len - 500, len - 1),
            ("bytes=9954-", len - 10, len - 1),
        ] {
            let r = server
                .request("GET", "/hls/demo/seg1.ts", &[("Range", range)])
                .await;
            assert_eq!(r.status, 206, "{range}");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {start}-{end}/{len}").as_str())
            );
            assert_eq!(
                r.header("content-length"),
                Some((end - start + 1).to_string().as_str())
            );
            assert_eq!(r.body, &data[start..=end], "{range}");
        }
    }
    let r = server
        .request(
            "GET",
            "/hls/demo/seg1.ts",
            &[("Range", &format!("bytes={len}-"))],
        )
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    // If-Range with a stale validator: the whole (current) file, not a mismatched slice.
    let stale = server
        .request(
            "GET",
            "/hls/demo/seg1.ts",
            &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
        )
        .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), len);
}

#[tokio::test]
async fn ranges_on_streamed_files() {
    // A file above the cache's entry limit is streamed from disk: same semantics.
    let server = Server::start(|c| c.cache_max_entry_bytes = 1024).await;
    let data = segment_bytes(SEGMENT_LEN);
    let full = server.get("/hls/demo/seg1.ts").await;
    assert_eq!(full.body, data);
    let r = server
        .request("GET", "/hls/demo/seg1.ts", &[("Range", "bytes=4000-4999")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[4000..5000]);
}

#[tokio::test]
async fn head_has_get_headers_and_no_body() {
    let server = Server::start(|_| {}).await;
    let get = server.get("/hls/demo/seg1.ts").await;
    let head = server.request("HEAD", "/hls/demo/seg1.ts", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD must not send a body");
    assert_eq!(
        head.header("content-length"),
        Some(SEGMENT_LEN.to_string().as_str())
    );
    for name in ["content-type", "etag", "last-modified", "cache-control"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let server = Server::start(|_| {}).await;
    let pre = server
        .request(
            "OPTIONS",
            "/hls/demo/seg1.ts",
            &[
                ("Origin", "https://player.example"),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "range"),
            ],
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(
        pre.header("access-control-allow-methods")
            .is_some_and(|m| m.contains("GET"))
    );
    assert!(
        pre.header("access-control-allow-headers")
            .is_some_and(|h| h.contains("Range"))
    );
    assert!(pre.header("access-control-max-age").is_some());

    let get = server
        .request(
            "GET",
            "/hls/demo/index.m3u8",
            &[("Origin", "https://player.example")],
        )
        .await;
    assert_eq!(get.header("access-control-allow-origin"), Some("*"));
    assert!(
        get.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("Content-Range"))
    );
}

#[tokio::test]
async fn other_methods_get_405() {
    let server = Server::start(|_| {}).await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "TRACE"] {
        let r = server
            .request(method, "/hls/demo/index.m3u8", &[("Content-Length", "0")])
            .await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
        assert!(r.body.len() < 64);
    }
}

#[tokio::test]
async fn traversal_attempts_are_refused() {
    let server = Server::start(|_| {}).await;
    let root = server.root();
    // Symlinks whose names are clean but whose targets leave the root: only the canonical
    // containment check can catch these.
    symlink(
        &server.dir.path().join("secret.m3u8"),
        &root.join("demo/leak.m3u8"),
    );
    symlink(server.dir.path(), &root.join("escape"));
    // A (relative) symlink that stays inside the root is fine.
    symlink(
        std::path::Path::new("index.m3u8"),
        &root.join("demo/alias.m3u8"),
    );

    let attempts: &[&[u8]] = &[
        b"GET /hls/../secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/../../secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/%2e%2e/secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/%2E%2E/%2E%2E/secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/..%2f..%2fsecret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo%2f..%2f..%2fsecret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/..%5c..%5csecret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/%252e%252e/secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls//etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/%2fetc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /../secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET http://x/hls/../secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/index.m3u8%00.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/index.m3u8\0.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/demo/leak.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/escape/secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /hls/escape/root/demo/../../secret.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for attempt in attempts {
        let r = raw(server.addr, attempt).await;
        let shown = String::from_utf8_lossy(attempt);
        assert!(matches!(r.status, 400 | 404), "{shown}: got {}", r.status);
        assert!(!r.text().contains(SECRET), "{shown} leaked the secret");
    }
    // Control: the same server serves legitimate paths, including an inside symlink.
    assert_eq!(server.get("/hls/demo/alias.m3u8").await.text(), PLAYLIST);
    assert_eq!(server.get("/hls/demo/index.m3u8").await.status, 200);
}

#[tokio::test]
async fn playlist_replaced_by_rename_is_served_fresh() {
    let server = Server::start(|_| {}).await;
    assert_eq!(server.get("/hls/demo/index.m3u8").await.text(), PLAYLIST);
    for sequence in 2..5 {
        let next =
            format!("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n#EXTINF:2.0,\nseg{sequence}.ts\n");
        server.replace("demo/index.m3u8", next.as_bytes());
        // Same second, same length: only a fresh read (or the inode) tells the versions apart.
        assert_eq!(server.get("/hls/demo/index.m3u8").await.text(), next);
    }
}

/// A settled playlist is served from memory, validated by its stamp: a rename over it, an
/// in-place rewrite of the same length, a symlink swapped in, or its removal must all be seen
/// by the very next request.
#[tokio::test]
async fn cached_playlist_is_never_stale() {
    let server = Server::start(|_| {}).await;
    let path = "/hls/demo/index.m3u8";
    let file = server.root().join("demo/index.m3u8");
    let mut current = PLAYLIST.to_string();
    for round in 0..4 {
        // Let the file settle so that these reads fill and then hit the playlist cache.
        tokio::time::sleep(origin::cache::PLAYLIST_SETTLE * 2).await;
        assert_eq!(server.get(path).await.text(), current);
        assert_eq!(server.get(path).await.text(), current);
        // Same length every round: only the stamp tells the versions apart.
        let next = format!("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{round}\n");
        if round % 2 == 0 {
            server.replace("demo/index.m3u8", next.as_bytes());
        } else {
            std::fs::write(&file, &next).expect("rewrite in place");
        }
        assert_eq!(server.get(path).await.text(), next, "round {round}");
        current = next;
    }
    tokio::time::sleep(origin::cache::PLAYLIST_SETTLE * 2).await;
    assert_eq!(server.get(path).await.text(), current);
    std::fs::remove_file(&file).expect("remove playlist");
    symlink(&server.dir.path().join("secret.m3u8"), &file);
    let escaped = server.get(path).await;
    assert_eq!(escaped.status, 404);
    assert!(!escaped.text().contains(SECRET));
    std::fs::remove_file(&file).expect("remove link");
    assert_eq!(server.get(path).await.status, 404);
}

#[tokio::test]
async fn plain_segments_hold_no_memory_and_are_never_stale() {
    let server = Server::start(|_| {}).await;
    let data = segment_bytes(SEGMENT_LEN);
    assert_eq!(server.get("/hls/demo/seg1.ts").await.body, data);
    assert_eq!(server.get("/hls/demo/seg1.ts").await.body, data);
    // Plain HTTP/1.1 sends segments from the file with sendfile: nothing is cached.
    let metrics = server.get("/metrics").await.text();
    assert_eq!(
        metric(&metrics, "origin_cache_misses_total"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "origin_cache_size_bytes"),
        Some(0.0),
        "{metrics}"
    );
    let sent = metric(&metrics, r#"origin_response_bytes_total{class="segment"}"#);
    assert_eq!(
        sent,
        Some((2 * SEGMENT_LEN) as f64),
        "sendfile bytes are counted"
    );

    // A segment rewritten under the same name (same length) is served new.
    let rewritten = vec![b'x'; SEGMENT_LEN];
    server.replace("demo/seg1.ts", &rewritten);
    assert_eq!(server.get("/hls/demo/seg1.ts").await.body, rewritten);
}

#[tokio::test]
async fn healthz_and_metrics() {
    let server = Server::start(|_| {}).await;
    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    server.get("/hls/demo/index.m3u8").await;
    server.get("/hls/demo/missing.ts").await;
    let m = server.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    let text = m.text();
    assert_eq!(
        metric(
            &text,
            r#"origin_requests_total{class="playlist",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"origin_requests_total{class="segment",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let playlist_bytes = metric(&text, r#"origin_response_bytes_total{class="playlist"}"#);
    assert_eq!(playlist_bytes, Some(PLAYLIST.len() as f64), "{text}");
    assert!(text.contains("origin_request_duration_seconds_bucket{class=\"playlist\""));
    // The /metrics request's own connection is open while it is rendered.
    assert!(metric(&text, "origin_open_connections").is_some_and(|v| v >= 1.0));
    for name in [
        "# HELP origin_cache_hits_total",
        "# HELP origin_cache_misses_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_file_io_serves_the_same() {
    let server = Server::start(|c| c.offload_file_io = true).await;
    let data = segment_bytes(SEGMENT_LEN);
    assert_eq!(server.get("/hls/demo/index.m3u8").await.text(), PLAYLIST);
    assert_eq!(server.get("/hls/demo/seg1.ts").await.body, data);
    let r = server
        .request("GET", "/hls/demo/seg1.ts", &[("Range", "bytes=10-19")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(server.get("/hls/demo/missing.ts").await.status, 404);
}

/// Another origin's packager may list a segment a few milliseconds before this one writes it
/// (`Config::segment_wait`): a request for it in between is answered once it is written, not
/// with a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_written_while_it_is_asked_for_is_served() {
    let server = Server::start(|_| {}).await;
    let data = segment_bytes(SEGMENT_LEN);
    let (addr, root) = (server.addr, server.root());
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let tmp = root.join("demo/.tmp-seg2");
            std::fs::write(&tmp, &data).expect("write");
            std::fs::rename(&tmp, root.join("demo/seg2.ts")).expect("rename");
        })
    };
    let r = raw(
        addr,
        b"GET /hls/demo/seg2.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    writer.await.expect("writer");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    let text = server.get("/metrics").await.text();
    assert_eq!(
        metric(&text, r#"origin_segment_waits_total{outcome="appeared"}"#),
        Some(1.0),
        "{text}"
    );
}

/// A segment that does not come is a 404 after the wait; with every waiting slot taken (here
/// none, so no test has to time one request against another), a 404 at once.
#[tokio::test]
async fn a_segment_that_does_not_come_is_a_404_and_waiters_are_bounded() {
    let waiting = Server::start(|c| c.segment_wait = std::time::Duration::from_millis(100)).await;
    assert_eq!(waiting.get("/hls/demo/never.ts").await.status, 404);
    let text = waiting.get("/metrics").await.text();
    assert_eq!(
        metric(&text, r#"origin_segment_waits_total{outcome="timed_out"}"#),
        Some(1.0),
        "{text}"
    );
    let full = Server::start(|c| c.max_segment_waiters = 0).await;
    assert_eq!(full.get("/hls/demo/never.ts").await.status, 404);
    let text = full.get("/metrics").await.text();
    assert_eq!(
        metric(&text, r#"origin_segment_waits_total{outcome="no_slot"}"#),
        Some(1.0),
        "the request did not wait: {text}"
    );
}

/// A `.ts` that is not a whole number of 188-byte packets was cut short: a 500, not half a
/// segment served as whole (a player retries a 5xx; it takes a cut body as the segment). Ranges
/// and HEAD too. The same bytes completed to whole packets are served.
#[tokio::test]
async fn a_transport_stream_cut_short_is_refused() {
    let server = Server::start(|_| {}).await;
    let data = segment_bytes(SEGMENT_LEN);
    server.replace("demo/seg1.ts", &data[..SEGMENT_LEN / 2 + 1]);
    for (method, headers) in [
        ("GET", &[][..]),
        ("HEAD", &[][..]),
        ("GET", &[("Range", "bytes=0-99")][..]),
    ] {
        let r = server.request(method, "/hls/demo/seg1.ts", headers).await;
        assert_eq!(r.status, 500, "{method} {headers:?}");
    }
    server.replace("demo/seg1.ts", &data[..188 * 20]);
    let r = server.get("/hls/demo/seg1.ts").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, &data[..188 * 20]);
}
