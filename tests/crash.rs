//! Durability: SIGKILL the relay while many clients are sending, restart it, and check that
//! every message that got a 250 is in the queue with identical bytes and nothing is half there.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::without_received;
use smtprelay::queue::SpoolPaths;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

const CLIENTS: usize = 20;
/// Acknowledged messages to wait for before the kill.
const KILL_AFTER: usize = 300;

fn start_relay(config: &Path) -> (Child, SocketAddr) {
    common::start_binary(config, &[])
}

/// A message whose content names its client and sequence number; some are large enough to
/// be streamed to disk before the end of DATA.
fn message(client: usize, n: usize) -> Vec<u8> {
    let mut content = format!(
        "From: c{client}@b.example\r\nTo: r@d.example\r\nMessage-ID: <{client}.{n}@test>\r\n\r\n"
    )
    .into_bytes();
    let lines = if n % 7 == 3 { 3000 } else { 20 + n % 50 };
    for i in 0..lines {
        content.extend_from_slice(
            format!("line {i} of message {n} from client {client}, padding padding padding\r\n")
                .as_bytes(),
        );
    }
    content
}

type Acknowledged = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Sends messages on one connection (pipelining the envelope) until something fails.
async fn send_until_failure(
    address: SocketAddr,
    c: usize,
    acknowledged: &Acknowledged,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(address).await?;
    let (read, mut write) = stream.into_split();
    let mut replies = AsyncBufReader::new(read).lines();
    let mut reply = async move || -> std::io::Result<String> {
        loop {
            let line = replies
                .next_line()
                .await?
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    };
    let expect = |line: &str, code: &str| {
        if line.starts_with(code) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("unexpected reply {line}")))
        }
    };
    expect(&reply().await?, "220")?;
    write.write_all(b"EHLO crash.test\r\n").await?;
    expect(&reply().await?, "250")?;
    for n in 0.. {
        let content = message(c, n);
        write
            .write_all(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@d.example>\r\nDATA\r\n")
            .await?;
        for code in ["250", "250", "354"] {
            expect(&reply().await?, code)?;
        }
        write.write_all(&content).await?;
        write.write_all(b".\r\n").await?;
        let line = reply().await?;
        expect(&line, "250")?;
        let id = line.rsplit(' ').next().unwrap_or_default().to_owned();
        acknowledged.lock().unwrap().insert(id, content);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smtprelay.toml");
    std::fs::write(
        &config,
        "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
         [access]\nclient_rate = \"100000/s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let (mut child, address) = start_relay(&config);

    // Queue ID -> content, for every message that got its 250.
    let acknowledged: Acknowledged = Arc::default();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let acknowledged = Arc::clone(&acknowledged);
        clients.push(tokio::spawn(async move {
            // Runs until the relay dies under it.
            let error = send_until_failure(address, c, &acknowledged).await;
            assert!(error.is_err());
        }));
    }
    while acknowledged.lock().unwrap().len() < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= KILL_AFTER);

    // Restart: recovery runs, then stop it cleanly and inspect the spool.
    let (mut child, _) = start_relay(&config);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let paths = SpoolPaths::new(dir.path().join("state/spool"));
    let scan = paths.scan().unwrap();
    assert!(scan.damaged.is_empty(), "damaged: {:?}", scan.damaged);
    assert_eq!(
        std::fs::read_dir(paths.tmp()).unwrap().count(),
        0,
        "leftovers in tmp/"
    );
    assert_eq!(std::fs::read_dir(paths.corrupt()).unwrap().count(), 0);
    let queued: HashMap<String, Vec<u8>> = scan
        .messages
        .iter()
        .map(|(path, file)| {
            let content = file.read_content(path).unwrap();
            (
                file.envelope.id.to_string(),
                without_received(&content).to_vec(),
            )
        })
        .collect();
    for (id, content) in &acknowledged {
        let stored = queued
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged {id} lost"));
        assert_eq!(stored, content, "{id} changed");
    }
    // Committed just before the kill but not yet answered: allowed (the client retries), and
    // such a message is complete, never half there.
    assert!(queued.len() - acknowledged.len() <= CLIENTS);
    eprintln!(
        "acknowledged {}, queued {} after restart",
        acknowledged.len(),
        queued.len()
    );
}
