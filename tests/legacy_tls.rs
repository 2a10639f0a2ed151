//! `tls_profile = "legacy"`: old printers and scanners (TLS 1.0/1.1, RSA key exchange, CBC)
//! send through a legacy listener, with real old-TLS clients (Python's `ssl` pinned to one
//! version at security level 0, and `openssl s_client`), while the default profile still
//! refuses them; the admin sees which devices need it (log line, metrics, status page).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::Receiver;

use base64::Engine;
use common::{TestPki, http_get, start_binary_with_admin, wait_for_log};
use serde_json::Value;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/old_tls_client.py"
);

/// A relay binary with three listeners on one RSA certificate: legacy STARTTLS, legacy
/// implicit TLS and a default (modern) STARTTLS one, each with AUTH, and no trusted network,
/// so every message needs AUTH PLAIN over the TLS it came through.
struct Relay {
    /// Taken by `stop`; a test that fails before it kills the relay on drop.
    child: Option<Child>,
    legacy: SocketAddr,
    legacy_implicit: SocketAddr,
    modern: SocketAddr,
    admin: String,
    logs: Receiver<Value>,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start(pki: &TestPki) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(pki.cert_path(), dir.path().join("cert.pem")).unwrap();
        std::fs::copy(pki.key_path(), dir.path().join("key.pem")).unwrap();
        let path = dir.path().join("smtprelay.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n\
                 [[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\ntls_profile = \"legacy\"\nauth = \"optional\"\n\
                 [[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\ntls_profile = \"legacy\"\nauth = \"optional\"\n\
                 [[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\nauth = \"optional\"\n\
                 [tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n\
                 [[user]]\nname = \"scanner\"\npassword_hash = {:?}\n\
                 [access]\ntrusted_networks = []\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
                smtprelay::smtp::policy::hash_password("pw")
            ),
        )
        .unwrap();
        Relay::run(dir)
    }

    /// Starts the relay binary on the configuration in `dir`.
    fn run(dir: tempfile::TempDir) -> Relay {
        let path = dir.path().join("smtprelay.toml");
        let (child, legacy, admin, logs) = start_binary_with_admin(&path, &[]);
        let next = |logs: &Receiver<Value>| -> SocketAddr {
            wait_for_log(logs, "listening")["address"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        };
        let legacy_implicit = next(&logs);
        let modern = next(&logs);
        Relay {
            child: Some(child),
            legacy,
            legacy_implicit,
            modern,
            admin: format!("http://{}", admin.unwrap()),
            logs,
            dir,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("smtprelay.toml")
    }

    /// The "message accepted" log lines so far.
    fn accepted(&self) -> Vec<Value> {
        self.logs
            .try_iter()
            .filter(|event| event["message"] == "message accepted")
            .collect()
    }

    fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    fn stop(mut self) -> tempfile::TempDir {
        self.signal(libc::SIGTERM);
        let status = self.child.take().unwrap().wait().unwrap();
        assert!(status.success(), "{status:?}");
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the pinned Python client: one message to `port` with AUTH PLAIN as scanner.
async fn old_client(port: u16, mode: &str, version: &str, ciphers: &str, ca: &Path) -> Value {
    let output = tokio::process::Command::new("python3")
        .arg(CLIENT)
        .args([&port.to_string(), mode, version, ciphers])
        .arg(ca)
        .args(["scanner", "pw"])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "client printed no JSON: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The value of one sample in Prometheus text, 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_devices_send_through_legacy_listeners_and_the_admin_sees_them() {
    let pki = TestPki::new_rsa();
    let ca = pki.ca_path();
    let relay = Relay::start(&pki);
    // (version offered, ciphers offered, version and IANA suite expected)
    let cases = [
        ("1.0", "", "TLSv1", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
        ("1.1", "", "TLSv1.1", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
        // RSA key exchange with CBC, as HP and Kyocera firmware of the 2010s speaks it.
        (
            "1.2",
            "AES128-SHA",
            "TLSv1.2",
            "TLS_RSA_WITH_AES_128_CBC_SHA",
        ),
        (
            "1.2",
            "ECDHE-RSA-AES128-SHA",
            "TLSv1.2",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        ),
        // A device that can do better does: the server prefers the modern suites.
        (
            "1.2",
            "",
            "TLSv1.2",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ),
        ("1.3", "", "TLSv1.3", "TLS_AES_128_GCM_SHA256"),
    ];
    for (version, ciphers, want_version, want_cipher) in cases {
        let sent = old_client(relay.legacy.port(), "starttls", version, ciphers, &ca).await;
        assert_eq!(sent["ok"], true, "TLS {version} {ciphers}: {sent}");
        assert_eq!(sent["version"], want_version, "{sent}");
        assert_eq!(sent["auth"], 235, "AUTH PLAIN over TLS {version}: {sent}");
        let accepted = relay.accepted();
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        // The log line names what the session negotiated: the version (Python says TLSv1
        // for 1.0) and the suite by its IANA name.
        let logged_version = if want_version == "TLSv1" {
            "TLSv1.0"
        } else {
            want_version
        };
        assert_eq!(accepted[0]["tls"], logged_version, "{accepted:?}");
        assert_eq!(accepted[0]["cipher"], want_cipher, "{accepted:?}");
    }
    // Implicit TLS (port 465) with TLS 1.0.
    let sent = old_client(relay.legacy_implicit.port(), "implicit", "1.0", "", &ca).await;
    assert_eq!(sent["ok"], true, "{sent}");
    assert_eq!(sent["version"], "TLSv1", "{sent}");
    assert_eq!(relay.accepted()[0]["tls"], "TLSv1.0");

    // Every message is in the queue.
    let queued = common::queued_messages(&relay.dir.path().join("state"));
    assert_eq!(queued, cases.len() + 1);

    // /metrics counts sessions by listener and version.
    let (_, metrics) = http_get(&format!("{}/metrics", relay.admin)).await;
    let sessions = |listener: SocketAddr, version: &str| {
        sample(
            &metrics,
            &format!(
                "smtprelay_tls_sessions_total{{listener=\"{listener}\",version=\"{version}\"}}"
            ),
        )
    };
    assert_eq!(sessions(relay.legacy, "TLSv1.0"), 1, "{metrics}");
    assert_eq!(sessions(relay.legacy, "TLSv1.1"), 1, "{metrics}");
    assert_eq!(sessions(relay.legacy, "TLSv1.2"), 3, "{metrics}");
    assert_eq!(sessions(relay.legacy, "TLSv1.3"), 1, "{metrics}");
    assert_eq!(sessions(relay.legacy_implicit, "TLSv1.0"), 1, "{metrics}");
    assert_eq!(
        sample(&metrics, "smtprelay_tls_outdated_clients"),
        1,
        "{metrics}"
    );

    // The status report lists the client on TLS older than 1.2: its last such session was
    // the implicit TLS 1.0 one, and three of its messages came over old TLS.
    let (_, status) = http_get(&format!("{}/status.json", relay.admin)).await;
    let status: Value = serde_json::from_str(&status).unwrap();
    let clients = status["outdated_tls_clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["address"], "127.0.0.1");
    assert_eq!(clients[0]["helo"], "old-printer.lan");
    assert_eq!(clients[0]["version"], "TLSv1.0");
    assert_eq!(clients[0]["cipher"], "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA");
    assert_eq!(clients[0]["messages"], 3);
    let admin = relay.admin.clone();
    let page = tokio::task::spawn_blocking(move || common::chromium_dom(&format!("{admin}/")))
        .await
        .unwrap();
    let row = page
        .split("<tr data-address=\"127.0.0.1\">")
        .nth(1)
        .expect("the page lists the client")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(
        row.contains("old-printer.lan") && row.contains("TLSv1.0"),
        "{row}"
    );
    let (_, text) = http_get(&format!("{}/status.txt", relay.admin)).await;
    assert!(
        text.contains("Clients on TLS older than 1.2")
            && text.contains("127.0.0.1 old-printer.lan TLSv1.0"),
        "{text}"
    );

    // The list outlives a restart (an upgrade, say): it is a week's observation.
    let relay = Relay::run(relay.stop());
    let (_, status) = http_get(&format!("{}/status.json", relay.admin)).await;
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["outdated_tls_clients"],
        Value::Array(clients.clone())
    );
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sends_over_tls_1_0_with_starttls() {
    let pki = TestPki::new_rsa();
    let ca = pki.ca_path();
    let relay = Relay::start(&pki);
    let plain = base64::engine::general_purpose::STANDARD.encode("\0scanner\0pw");
    let session = format!(
        "EHLO old-scanner.lan\nAUTH PLAIN {plain}\nMAIL FROM:<scanner@contoso.example>\n\
         RCPT TO:<someone@contoso.example>\nDATA\nSubject: s_client\n\nscanned\n.\nQUIT\n"
    );
    let mut s_client = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-starttls",
            "smtp",
        ])
        .args([
            "-crlf",
            "-ign_eof",
            "-connect",
            &relay.legacy.to_string(),
            "-CAfile",
        ])
        .arg(&ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = s_client.stdin.take().unwrap();
    stdin.write_all(session.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(common::TIMEOUT, s_client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Protocol  : TLSv1\n"), "{stdout}");
    assert!(stdout.contains("235 2.7.0"), "{stdout}");
    assert!(stdout.contains("250 2.0.0 Ok: queued as"), "{stdout}");
    let accepted = wait_for_log(&relay.logs, "message accepted");
    assert_eq!(accepted["tls"], "TLSv1.0");
    assert_eq!(accepted["user"], "scanner");
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modern_profile_still_refuses_old_tls_and_rsa_key_exchange() {
    let pki = TestPki::new_rsa();
    let ca = pki.ca_path();
    let relay = Relay::start(&pki);
    for (version, ciphers) in [
        ("1.0", ""),
        ("1.1", ""),
        ("1.2", "AES128-SHA"),
        ("1.2", "ECDHE-RSA-AES128-SHA"),
    ] {
        let sent = old_client(relay.modern.port(), "starttls", version, ciphers, &ca).await;
        assert_eq!(
            sent["ok"], false,
            "TLS {version} {ciphers} got through: {sent}"
        );
        assert!(sent["error"].as_str().unwrap().contains("SSL"), "{sent}");
        // The log says what would let the device in.
        let failed = wait_for_log(
            &relay.logs,
            "TLS handshake failed: the client speaks only an old TLS version or cipher; \
             an old device may need a listener with tls_profile = \"legacy\"",
        );
        assert_eq!(
            failed["peer"].as_str().unwrap().split(':').next(),
            Some("127.0.0.1")
        );
    }
    let sent = old_client(
        relay.modern.port(),
        "starttls",
        "1.2",
        "ECDHE-RSA-AES128-GCM-SHA256",
        &ca,
    )
    .await;
    assert_eq!(sent["ok"], true, "{sent}");
    let (_, metrics) = http_get(&format!("{}/metrics", relay.admin)).await;
    let failures = format!(
        "smtprelay_tls_handshake_failures_total{{listener=\"{}\"}}",
        relay.modern
    );
    assert_eq!(sample(&metrics, &failures), 4, "{metrics}");
    assert_eq!(
        sample(&metrics, "smtprelay_tls_outdated_clients"),
        0,
        "{metrics}"
    );
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_legacy_listener_s_certificate_for_new_sessions() {
    let (old, renewed) = (TestPki::new_rsa(), TestPki::new_rsa());
    let (old_ca, renewed_ca) = (old.ca_path(), renewed.ca_path());
    let relay = Relay::start(&old);
    let sent = old_client(relay.legacy.port(), "starttls", "1.0", "", &old_ca).await;
    assert_eq!(sent["ok"], true, "{sent}");

    // What a certbot deploy hook does: new files, then a reload.
    std::fs::copy(renewed.cert_path(), relay.dir.path().join("cert.pem")).unwrap();
    std::fs::copy(renewed.key_path(), relay.dir.path().join("key.pem")).unwrap();
    relay.signal(libc::SIGHUP);
    wait_for_log(&relay.logs, "configuration reloaded");

    for (ca, ok) in [(&old_ca, false), (&renewed_ca, true)] {
        let sent = old_client(relay.legacy.port(), "starttls", "1.0", "", ca).await;
        assert_eq!(sent["ok"], ok, "{sent}");
    }
    let sent = old_client(
        relay.legacy_implicit.port(),
        "implicit",
        "1.1",
        "",
        &renewed_ca,
    )
    .await;
    assert_eq!(sent["ok"], true, "{sent}");
    assert!(relay.config().exists());
    relay.stop();
}
