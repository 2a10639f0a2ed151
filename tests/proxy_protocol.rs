//! A `proxy_protocol` listener behind a real HAProxy (Debian's `haproxy`; `.ci/run` installs
//! it): the client's address comes from the PROXY header (v2 and v1), so `trusted_networks`
//! and the logs see the client, not the balancer; connections from elsewhere, or without a
//! valid header, are refused.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use common::{Client, TestRelay, config_text};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// HAProxy in TCP mode with two frontends on listeners this test bound (port 0, handed over
/// as fds 3 and 4): one sends PROXY v2 to the relay, the other v1. Killed when dropped.
struct Haproxy {
    child: std::process::Child,
    v2: SocketAddr,
    v1: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(relay: SocketAddr) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend v2\n  bind fd@3\n  default_backend relay_v2\n\
                 frontend v1\n  bind fd@4\n  default_backend relay_v1\n\
                 backend relay_v2\n  server relay {relay} send-proxy-v2\n\
                 backend relay_v1\n  server relay {relay} send-proxy\n"
            ),
        )
        .unwrap();
        let v2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (v2_addr, v1_addr) = (v2.local_addr().unwrap(), v1.local_addr().unwrap());
        let (v2_fd, v1_fd) = (v2.as_raw_fd(), v1.as_raw_fd());
        let mut command = std::process::Command::new("haproxy");
        command
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec; dup2 clears
        // close-on-exec on the copies, so HAProxy inherits them as fds 3 and 4.
        unsafe {
            command.pre_exec(move || {
                for (fd, target) in [(v2_fd, 3), (v1_fd, 4)] {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("haproxy is installed (.ci/run installs it)");
        // HAProxy has its own copies now.
        drop((v2, v1));
        Haproxy {
            child,
            v2: v2_addr,
            v1: v1_addr,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Through the balancer from `from`: the greeting, or what the relay said instead.
async fn through(balancer: SocketAddr, from: IpAddr) -> Client {
    // HAProxy takes a moment to start serving its inherited listeners.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let client = Client::connect_from(from, balancer).await;
        if client.greeting.0 != 0 || std::time::Instant::now() > deadline {
            return client;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_comes_from_haproxys_header() {
    let captured = common::CapturedLogs::install("info");
    // Only the client at 127.0.0.2 may relay; the balancer is 127.0.0.1.
    let listen = "[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
                  proxy_protocol = true\nproxy_from = [\"127.0.0.1/32\"]\n";
    let relay = TestRelay::start_with(move |state| {
        config_text(
            state,
            listen,
            "[access]\ntrusted_networks = [\"127.0.0.2/32\"]\n",
        )
    })
    .await;
    let haproxy = Haproxy::start(relay.addr());

    for balancer in [haproxy.v2, haproxy.v1] {
        let mut client = through(balancer, CLIENT).await;
        assert_eq!(client.greeting.0, 220, "{:?}", client.greeting);
        client.expect("EHLO printer", 250).await;
        let (code, text) = client
            .send_message(
                "scanner@contoso.com",
                &["a@fabrikam.com"],
                b"Subject: x\r\n\r\nx\r\n",
            )
            .await;
        assert_eq!(code, 250, "{text}");
        client.expect("QUIT", 221).await;
        // Someone else through the same balancer is not trusted: the header said who.
        let mut stranger = through(balancer, STRANGER).await;
        stranger.expect("EHLO laptop", 250).await;
        stranger.expect("MAIL FROM:<x@contoso.com>", 250).await;
        let reply = stranger.expect("RCPT TO:<a@fabrikam.com>", 554).await;
        assert!(reply.contains("5.7.1"), "{reply}");
    }
    let queued = relay.queued();
    assert_eq!(queued.len(), 2);
    for (file, content) in &queued {
        assert_eq!(file.envelope.client.address, CLIENT);
        let content = String::from_utf8_lossy(content);
        assert!(content.contains("[127.0.0.2]"), "{content}");
    }
    let logs = captured.text();
    assert!(
        logs.lines()
            .any(|l| l.contains("message accepted") && l.contains("peer=127.0.0.2:")),
        "{logs}"
    );

    // Straight to the relay from a balancer's address, without a header: refused.
    let mut direct = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    direct.write_all(b"EHLO sneaky\r\n").await.unwrap();
    let mut answer = String::new();
    direct.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("421 4.7.0 Bad PROXY protocol header"),
        "{answer:?}"
    );
    // From anywhere else: refused before anything is read.
    let stranger = Client::connect_from(STRANGER, relay.addr()).await;
    assert_eq!(stranger.greeting.0, 554, "{:?}", stranger.greeting);
    assert!(
        stranger.greeting.1.contains("5.7.1"),
        "{:?}",
        stranger.greeting
    );
    let (_, metrics) = common::http_get(&format!("{}/metrics", relay.admin().await)).await;
    assert!(
        metrics.contains("smtprelay_refusals_total{reason=\"bad_proxy_header\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtprelay_refusals_total{reason=\"not_from_proxy\"} 1"),
        "{metrics}"
    );
}

#[test]
fn proxy_protocol_needs_the_balancers_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(
        &path,
        "[[listen]]\naddress = \"127.0.0.1:2525\"\nauth = \"none\"\nproxy_protocol = true\n",
    )
    .unwrap();
    let error = smtprelay::config::Config::load(&path).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("listen[1].proxy_from: proxy_protocol needs proxy_from"),
        "{error}"
    );
}
