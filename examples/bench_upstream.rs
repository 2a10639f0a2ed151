//! A fast stand-in for Exchange Online and its token endpoint, for `benchmarks/delivery.sh`:
//! an OAuth2 token endpoint (plain http on loopback) and an SMTP sink that insists on
//! STARTTLS and checks AUTH XOAUTH2 against the token it issued, then discards messages.
//!
//!     cargo run --release --example bench_upstream -- SMTP_PORT TOKEN_PORT DIR [GRAPH_PORT]
//!
//! With GRAPH_PORT it also stands in for Microsoft Graph there (HTTPS): sendMail for
//! `benchmarks/graph.sh`, drafts and upload sessions for `benchmarks/large.sh`. Writes DIR/ca.pem (the CA to trust) and prints the number of
//! messages received when it gets SIGTERM or SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const TOKEN: &str = "bench-access-token-0123456789";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (smtp_port, token_port, dir) = (&args[1], &args[2], std::path::PathBuf::from(&args[3]));
    let tls = tls_acceptor(&dir);
    let graph_tls = tls.clone();
    let received = Arc::new(AtomicU64::new(0));

    let tokens = TcpListener::bind(format!("127.0.0.1:{token_port}"))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = tokens.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                let body = format!(
                    r#"{{"token_type":"Bearer","expires_in":3600,"access_token":"{TOKEN}"}}"#
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });

    let smtp = TcpListener::bind(format!("127.0.0.1:{smtp_port}"))
        .await
        .unwrap();
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((socket, _)) = smtp.accept().await {
            let _ = socket.set_nodelay(true);
            let (tls, counter) = (tls.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let _ = session(socket, tls, counter).await;
            });
        }
    });

    if let Some(graph_port) = args.get(4) {
        let graph = TcpListener::bind(format!("127.0.0.1:{graph_port}"))
            .await
            .unwrap();
        let (tls, counter) = (graph_tls, Arc::clone(&received));
        tokio::spawn(async move {
            while let Ok((socket, _)) = graph.accept().await {
                let _ = socket.set_nodelay(true);
                let (tls, counter) = (tls.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let _ = graph_session(socket, tls, counter).await;
                });
            }
        });
    }

    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("{}", received.load(Ordering::Relaxed));
}

fn tls_acceptor(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    smtprelay::smtp::tls::acceptor(&smtprelay::config::TlsConfig {
        certificate: dir.join("cert.pem"),
        private_key: dir.join("key.pem"),
    })
    .unwrap()
}

async fn session(
    socket: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    received: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut plain = BufReader::new(socket);
    plain.get_mut().write_all(b"220 bench ESMTP\r\n").await?;
    loop {
        let mut line = String::new();
        if plain.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            plain
                .get_mut()
                .write_all(b"250-bench\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                .await?;
        } else if upper.starts_with("STARTTLS") {
            plain.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            let stream = tls.accept(plain.into_inner()).await?;
            return secure(BufReader::new(stream), received).await;
        } else {
            plain
                .get_mut()
                .write_all(b"530 5.7.0 STARTTLS first\r\n")
                .await?;
        }
    }
}

async fn secure<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: BufReader<S>,
    received: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut authenticated = false;
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH XOAUTH2\r\n"
        } else if upper.starts_with("AUTH XOAUTH2 ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(line[13..].trim())
                .unwrap_or_default();
            authenticated = String::from_utf8_lossy(&decoded)
                .ends_with(&format!("auth=Bearer {TOKEN}\x01\x01"));
            if authenticated {
                b"235 2.7.0 ok\r\n"
            } else {
                b"535 5.7.3 bad token\r\n"
            }
        } else if !authenticated {
            b"530 5.7.57 not authenticated\r\n"
        } else if upper.starts_with("DATA") {
            io.get_mut().write_all(b"354 go\r\n").await?;
            loop {
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
            }
            received.fetch_add(1, Ordering::Relaxed);
            b"250 2.6.0 queued\r\n"
        } else if upper.starts_with("QUIT") {
            io.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 2.0.0 ok\r\n"
        };
        io.get_mut().write_all(reply).await?;
    }
}

/// A Graph stand-in over HTTPS (HTTP/1.1, keep-alive): `sendMail` (the bearer token, the
/// base64 body, 202), and the draft path for larger messages: `POST …/messages` (201 with an
/// id), small attachments (201), `createUploadSession` (201 with an upload URL on this
/// server), the chunks `PUT` to it without a token, each at most 4 MiB and a multiple of
/// 320 KiB but the last, in order (200, 201 after the last), and `/send` (202). Bodies are
/// read and dropped.
async fn graph_session(
    socket: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    received: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let port = socket.local_addr()?.port();
    let mut stream = BufReader::new(tls.accept(socket).await?);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let (mut length, mut authorised, mut range) = (0usize, false, None);
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorised = value.trim() == format!("Bearer {TOKEN}"),
                "content-range" => range = content_range(value.trim()),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut body).await?;
        let mut words = request_line.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (status, json) = graph_answer(method, path, authorised, range, &body, port, &received);
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprintln!("{method} {path} {range:?} {} -> {status}", body.len());
        }
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        stream.get_mut().write_all(response.as_bytes()).await?;
        // TLS may keep what it could not write yet: without a flush, the answer can wait
        // there for ever while the client waits for it.
        stream.get_mut().flush().await?;
    }
}

/// `bytes a-b/total`.
fn content_range(value: &str) -> Option<(usize, usize, usize)> {
    let (span, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

fn graph_answer(
    method: &str,
    path: &str,
    authorised: bool,
    range: Option<(usize, usize, usize)>,
    body: &[u8],
    port: u16,
    received: &AtomicU64,
) -> (&'static str, String) {
    use std::sync::atomic::AtomicUsize;
    static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
    let error = |status, code: &str| (status, format!(r#"{{"error":{{"code":"{code}"}}}}"#));
    if method == "PUT" && path.starts_with("/upload/") {
        // Pre-authenticated: a token is refused.
        let Some((start, end, total)) = range.filter(|_| !authorised) else {
            return error("400 Bad Request", "InvalidContentRange");
        };
        let len = end + 1 - start;
        let last = end + 1 == total;
        if len != body.len() || len > 4 << 20 || !(last || len.is_multiple_of(320 << 10)) {
            return error("400 Bad Request", "InvalidContentRange");
        }
        return match last {
            true => ("201 Created", "{}".into()),
            false => (
                "200 OK",
                format!(r#"{{"nextExpectedRanges":["{}-"]}}"#, end + 1),
            ),
        };
    }
    if !authorised {
        return error("401 Unauthorized", "InvalidAuthenticationToken");
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    match method {
        "POST" if path.ends_with("/sendMail") && !body.is_empty() => {
            received.fetch_add(1, Ordering::Relaxed);
            ("202 Accepted", String::new())
        }
        "POST" if path.ends_with("/messages") => {
            ("201 Created", format!(r#"{{"id":"draft-{id}"}}"#))
        }
        "POST" if path.ends_with("/attachments") => ("201 Created", "{}".into()),
        "POST" if path.ends_with("/attachments/createUploadSession") => (
            "201 Created",
            format!(
                r#"{{"uploadUrl":"https://localhost:{port}/upload/{id}","nextExpectedRanges":["0-"]}}"#
            ),
        ),
        "POST" if path.ends_with("/send") => {
            received.fetch_add(1, Ordering::Relaxed);
            ("202 Accepted", String::new())
        }
        _ => error("400 Bad Request", "ErrorInvalidRequest"),
    }
}
