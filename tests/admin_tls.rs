//! `[admin] tls = true`: the admin endpoint speaks HTTPS only (a plain HTTP request gets no
//! HTTP answer), every response carries HSTS, and a reload serves a renewed certificate on
//! the same port.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TIMEOUT, TestPki, start_binary_with_admin, wait_for_log};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(dir: &std::path::Path) -> String {
    format!(
        "[server]\nhostname = \"relay.test\"\nstate_dir = {state:?}\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntls = true\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
         [log]\nformat = \"json\"\n",
        state = dir.join("state"),
        cert = dir.join("admin-cert.pem"),
        key = dir.join("admin-key.pem"),
    )
}

/// Puts `pki`'s certificate and key where the configuration names them.
fn install(pki: &TestPki, dir: &std::path::Path) {
    std::fs::copy(pki.cert_path(), dir.join("admin-cert.pem")).unwrap();
    std::fs::copy(pki.key_path(), dir.join("admin-key.pem")).unwrap();
}

/// One HTTP/1.1 request over TLS, trusting only `pki`'s CA; the whole response as text.
async fn https_get(address: SocketAddr, pki: &TestPki, path: &str) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(TIMEOUT, pki.connector().connect(name, tcp))
        .await
        .expect("the handshake ends")?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut response))
        .await
        .expect("the response ends")?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_with_hsts_and_a_reload_serves_the_renewed_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let first = TestPki::new();
    install(&first, dir.path());
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let (mut relay, _smtp, admin, logs) = start_binary_with_admin(&path, &[]);
    let admin = admin.expect("the admin endpoint listens");

    // No account is configured: /health says 503 "unhealthy", over HTTPS.
    let response = https_get(admin, &first, "/health").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("\"status\":\"unhealthy\""), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000\r\n"),
        "{response}"
    );
    // The status page too, and its refusals: every answer over HTTPS says HSTS.
    let page = https_get(admin, &first, "/").await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{page}"
    );

    // Plain HTTP: the handshake fails on the request's first bytes, and nothing of the
    // endpoint is served (at most a TLS alert record, never an HTTP status line).
    let mut plain = tokio::net::TcpStream::connect(admin).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_end(&mut answer))
        .await
        .expect("the connection is closed");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/"),
        "{answer:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("healthy"),
        "{answer:?}"
    );

    // A renewed certificate (another CA here, so the old one cannot pass for it) and a
    // SIGHUP: the same port serves the new one.
    let renewed = TestPki::new();
    install(&renewed, dir.path());
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        // The old generation may finish a connection it accepted; new ones get the new
        // certificate once the reload is through.
        match https_get(admin, &renewed, "/ready").await {
            Ok(response) if response.starts_with("HTTP/1.1 200") => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "the renewed certificate is not served: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        https_get(admin, &first, "/ready").await.is_err(),
        "the old certificate is still served"
    );

    signal(&relay, libc::SIGTERM);
    relay.wait().unwrap();
}
