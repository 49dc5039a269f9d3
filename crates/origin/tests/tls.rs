//! TLS with a certificate generated in the test: HTTP/1.1 and h2 negotiated by ALPN, and a
//! plain-text client refused.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{PLAYLIST, Server};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

async fn tls_server() -> (Server, rustls::pki_types::CertificateDer<'static>) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("demo")).expect("mkdir");
    std::fs::write(root.join("demo/index.m3u8"), PLAYLIST).expect("playlist");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).expect("cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("key");
    let mut config = origin::Config::new(&root);
    config.tls = Some(origin::TlsFiles { cert, key });
    let der = generated.cert.der().clone();
    (Server::start_with(dir, config).await, der)
}

async fn connect(
    server: &Server,
    cert: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

fn request() -> http::Request<Empty<Bytes>> {
    http::Request::get("https://localhost/hls/demo/index.m3u8")
        .body(Empty::new())
        .expect("request")
}

#[tokio::test]
async fn tls_serves_h2_by_alpn() {
    let (server, cert) = tls_server().await;
    let tls = connect(&server, &cert, b"h2").await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "server must pick h2"
    );
    let mut sender = common::h2_client(tls).await;
    let response = sender.send_request(request()).await.expect("h2 request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(common::body(response).await, PLAYLIST.as_bytes());
}

#[tokio::test]
async fn tls_serves_http1_by_alpn() {
    let (server, cert) = tls_server().await;
    let tls = connect(&server, &cert, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request()).await.expect("h1 request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(common::body(response).await, PLAYLIST.as_bytes());
}

#[tokio::test]
async fn plain_http_is_not_served_on_the_tls_port() {
    let (server, _) = tls_server().await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(common::CLIENT_TIMEOUT, tcp.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(
        !String::from_utf8_lossy(&buf).contains("#EXTM3U"),
        "plaintext request was served"
    );
}
