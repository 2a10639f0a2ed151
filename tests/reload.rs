//! SIGHUP: a valid configuration takes effect for new sessions while open sessions finish
//! with the old one; an invalid configuration is refused and the running one stays.

mod common;

use std::time::Duration;

use common::{Client, start_binary_with_logs, wait_for_log};

fn config(allowed_senders: &str, extra_listener: Option<u16>) -> String {
    let mut text = format!(
        "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
         [access]\nallowed_senders = {allowed_senders}\n[admin]\nlisten = \"\"\n[log]\nformat = \"json\"\n"
    );
    if let Some(port) = extra_listener {
        text.push_str(&format!(
            "[[listen]]\naddress = \"127.0.0.1:{port}\"\nauth = \"none\"\n"
        ));
    }
    text
}

/// Sends `signal` to the relay (SIGHUP: reload, SIGTERM: stop).
fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_sessions_and_applies_to_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(&path, config("[]", None)).unwrap();
    let (mut relay, address, logs) = start_binary_with_logs(&path, &[]);

    // A session that is half-way through a message when the configuration changes.
    let mut open = Client::connect(address).await;
    open.expect("EHLO before", 250).await;
    open.expect("MAIL FROM:<printer@anywhere.example>", 250)
        .await;

    // Load from other clients across the reload: every message must get its 250.
    let load: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(async move {
                let mut accepted = 0;
                for n in 0..25 {
                    let mut client = Client::connect(address).await;
                    client.expect("EHLO load", 250).await;
                    let body = format!("Subject: {c}-{n}\r\n\r\nx\r\n");
                    let (code, text) = client
                        .send_message("scanner@contoso.com", &["a@fabrikam.com"], body.as_bytes())
                        .await;
                    assert_eq!(code, 250, "{text}");
                    accepted += 1;
                }
                accepted
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let extra = common::free_port();
    std::fs::write(&path, config("[\"*@contoso.com\"]", Some(extra))).unwrap();
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    let mut accepted = 0;
    for client in load {
        accepted += client.await.unwrap();
    }
    assert_eq!(accepted, 100);

    // The open session finishes under the rules it started with.
    open.expect("RCPT TO:<a@fabrikam.com>", 250).await;
    open.expect("DATA", 354).await;
    open.send_raw(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(open.reply().await.0, 250);

    // New sessions, on the same socket, get the new rules; the new listener answers.
    let mut fresh = Client::connect(address).await;
    fresh.expect("EHLO after", 250).await;
    assert!(
        fresh
            .expect("MAIL FROM:<printer@anywhere.example>", 550)
            .await
            .starts_with("5.7.1")
    );
    fresh.expect("MAIL FROM:<scanner@contoso.com>", 250).await;
    let added = Client::connect(format!("127.0.0.1:{extra}").parse().unwrap()).await;
    assert_eq!(added.greeting.0, 220);

    // A broken file is refused; the relay keeps serving with what it has.
    std::fs::write(&path, "[server\nthis is not toml").unwrap();
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "reload refused: the running configuration stays");
    let mut still = Client::connect(address).await;
    still.expect("EHLO still", 250).await;
    still
        .expect("MAIL FROM:<printer@anywhere.example>", 550)
        .await;
    drop((open, fresh, added, still));

    signal(&relay, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || relay.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    // The 100 load messages and the open session's message, all in the spool.
    let queued = smtprelay::queue::SpoolPaths::new(dir.path().join("state/spool"))
        .scan()
        .unwrap();
    assert_eq!(queued.messages.len(), 101);
}

/// The next notification systemd would get on `socket`, including status updates.
fn any_notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .expect("a notification within the timeout");
    String::from_utf8(buffer[..n].to_vec()).unwrap()
}

/// The next notification that is more than a periodic status update.
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    loop {
        let message = any_notification(socket);
        if !message.starts_with("STATUS=") {
            return message;
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(&path, config("[]", None)).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let (mut relay, address, logs) =
        start_binary_with_logs(&path, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);

    let ready = notification(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!(
            "STATUS=listening on {address}; 0 queued, 0 sessions open"
        )),
        "{ready}"
    );

    // A reload, applied, then one refused: READY follows RELOADING either way.
    for text in [config("[\"*@contoso.com\"]", None), "[server\n".to_owned()] {
        std::fs::write(&path, text).unwrap();
        signal(&relay, libc::SIGHUP);
        let reloading = notification(&socket);
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert!(notification(&socket).starts_with("READY=1\n"));
    }
    wait_for_log(&logs, "reload refused: the running configuration stays");

    signal(&relay, libc::SIGTERM);
    assert_eq!(notification(&socket), "STOPPING=1");
    assert!(relay.wait().unwrap().success());
}

#[test]
fn systemd_abstract_notify_sockets_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(&path, config("[]", None)).unwrap();
    use std::os::linux::net::SocketAddrExt;
    let name = format!("smtprelay-test-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&address).unwrap();
    socket.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let (mut relay, _, _logs) =
        start_binary_with_logs(&path, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert!(notification(&socket).starts_with("READY=1\n"));
    signal(&relay, libc::SIGTERM);
    assert!(relay.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    // Everything at info but the session, whose refusals are info events.
    let quiet = "level = \"info,smtprelay::smtp::session=warn\"\n";
    std::fs::write(&path, config("[]", None) + quiet).unwrap();
    let (mut relay, address, logs) = start_binary_with_logs(&path, &[]);

    // "refused" is not logged while the session is at warn…
    let mut client = Client::connect(address).await;
    client.expect("BOGUS", 500).await;
    std::fs::write(&path, config("[]", None) + "level = \"info\"\n").unwrap();
    signal(&relay, libc::SIGHUP);
    loop {
        let event = logs.recv_timeout(common::TIMEOUT).expect("a reload");
        assert_ne!(event["message"], "refused", "{event}");
        if event["message"] == "configuration reloaded" {
            break;
        }
    }
    // … and logged once the reloaded level says info.
    client.expect("BOGUS", 500).await;
    let event = wait_for_log(&logs, "refused");
    assert_eq!(event["level"], "INFO");

    signal(&relay, libc::SIGTERM);
    assert!(relay.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_a_renewed_certificate_to_new_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (old, renewed) = (common::TestPki::new(), common::TestPki::new());
    let install = |pki: &common::TestPki| {
        std::fs::copy(pki.cert_path(), dir.path().join("cert.pem")).unwrap();
        std::fs::copy(pki.key_path(), dir.path().join("key.pem")).unwrap();
    };
    install(&old);
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(
        &path,
        "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
         auth = \"none\"\n[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n\
         [admin]\nlisten = \"\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let (mut relay, address, logs) = start_binary_with_logs(&path, &[]);
    let mut before = Client::connect(address).await;
    before.expect("EHLO before", 250).await;
    before.starttls(&old).await;

    // What a certbot deploy hook does: new files, then a reload.
    install(&renewed);
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    // The handshake verifies against the renewed certificate's CA only.
    let mut after = Client::connect(address).await;
    after.expect("EHLO after", 250).await;
    after.starttls(&renewed).await;
    after.expect("EHLO after", 250).await;
    // The session from before goes on over its TLS.
    before.expect("EHLO before", 250).await;

    signal(&relay, libc::SIGTERM);
    drop((before, after));
    assert!(relay.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_before_a_reload_count_against_max_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    let text = config("[]", None).replace("[server]\n", "[server]\nmax_connections = 2\n");
    std::fs::write(&path, &text).unwrap();
    let (mut relay, address, logs) = start_binary_with_logs(&path, &[]);
    let mut first = Client::connect(address).await;
    let mut second = Client::connect(address).await;
    first.expect("EHLO first", 250).await;
    second.expect("EHLO second", 250).await;

    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    let refused = Client::connect(address).await;
    assert_eq!(refused.greeting.0, 421, "{}", refused.greeting.1);

    // A slot freed under the old configuration is one for the new.
    first.expect("QUIT", 221).await;
    drop(first);
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let client = Client::connect(address).await;
        if client.greeting.0 == 220 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    signal(&relay, libc::SIGTERM);
    drop(second);
    assert!(relay.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_watchdog_and_status_hear_from_the_relay_only_when_it_asked_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(&path, config("[]", None)).unwrap();
    for (pid_matches, pings) in [(true, 3), (false, 0)] {
        let socket_path = dir.path().join(format!("notify-{pid_matches}.sock"));
        let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        // WatchdogSec=200ms: a ping every 100 ms. WATCHDOG_PID is set by systemd; a relay
        // started by a process that inherited it (another pid) must not ping.
        let mut env = vec![
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ];
        if !pid_matches {
            env.push(("WATCHDOG_PID", "1"));
        }
        let (mut relay, address, _logs) = start_binary_with_logs(&path, &env);
        socket.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        assert!(notification(&socket).starts_with("READY=1\n"));
        if pings > 0 {
            for _ in 0..pings {
                let ping = notification(&socket);
                assert!(ping.starts_with("WATCHDOG=1\nSTATUS="), "{ping}");
            }
            // The status line follows the queue (no account here: the message stays).
            let mut client = common::Client::connect(address).await;
            client.expect("EHLO printer", 250).await;
            let (code, _) = client
                .send_message("a@contoso.com", &["b@fabrikam.com"], b"x\r\n")
                .await;
            assert_eq!(code, 250);
            while !notification(&socket).contains("; 1 queued, 1 sessions open") {}
        } else {
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            let mut buffer = [0u8; 64];
            assert!(socket.recv(&mut buffer).is_err(), "a ping for another pid");
        }
        signal(&relay, libc::SIGTERM);
        assert!(relay.wait().unwrap().success());
    }
}

/// A relay configuration in `dir` with the tables `tables`, the app-only account "contoso"
/// (the confidential app's secret in `dir/secret`) and a second account `second` of the same
/// app with `second_keys`, both through `exchange`.
fn two_accounts(
    entra: &common::entra::Entra,
    exchange: &common::exchange::Exchange,
    dir: &std::path::Path,
    tables: &str,
    second: &str,
    second_keys: &str,
) -> std::path::PathBuf {
    use common::tokens::account;
    let path = dir.join("smtprelay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{tables}{}{}{}{}",
            account(
                entra,
                "contoso",
                "app-secret",
                "client_credentials",
                "client_secret_file = \"secret\""
            ),
            exchange.upstream_table(dir),
            account(
                entra,
                second,
                "app-secret",
                "client_credentials",
                second_keys
            ),
            exchange.upstream_table(dir),
        ),
    )
    .unwrap();
    path
}

/// The token manager's counters and the alert memory live for the process: after a reload,
/// `/metrics` goes on counting from where it was, the token in memory is used (no new token
/// request), and a condition that is still true does not fire again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_token_counters_and_alert_memory() {
    use common::tokens::{SECRET, tenant};
    let (entra, exchange) = tenant().await;
    let (hook, hooked) = common::webhook().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("wrong-secret"), "not-the-secret").unwrap();
    let path = two_accounts(
        &entra,
        &exchange,
        dir.path(),
        &format!("[alerts]\nwebhook = {hook:?}\n"),
        "broken",
        "client_secret_file = \"wrong-secret\"",
    );
    let key_hex = common::token_key_hex();
    let (mut relay, _, admin, logs) =
        common::start_binary_with_admin(&path, &[("SMTPRELAY_TOKEN_KEY", key_hex.as_str())]);
    let admin = admin.expect("the admin endpoint listens");
    let metric = async |name: &str, account: &str| -> f64 {
        let (_, body) = common::http_get(&format!("http://{admin}/metrics")).await;
        let wanted = format!("{name}{{account=\"{account}\"}} ");
        body.lines()
            .find_map(|line| line.strip_prefix(&wanted))
            .map_or(-1.0, |v| v.parse().unwrap())
    };
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while metric("smtprelay_token_refreshes_total", "contoso").await < 1.0
        || hooked.lock().unwrap().is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no token, or no alert"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = metric("smtprelay_token_refresh_failures_total", "broken").await;
    assert!(failures >= 1.0, "{failures}");
    let fired: Vec<String> = hooked
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["key"].to_string())
        .collect();
    assert_eq!(fired, ["\"account:broken:misconfigured\""], "{fired:?}");

    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    // Past the new alerter's first look at the conditions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hooked.lock().unwrap().len(),
        1,
        "{:?}",
        hooked.lock().unwrap()
    );
    assert_eq!(
        metric("smtprelay_token_refreshes_total", "contoso").await,
        1.0
    );
    // The broken account counts on (a reload is a new try for it); contoso asked only once.
    let failures_now = metric("smtprelay_token_refresh_failures_total", "broken").await;
    assert!(failures_now >= failures, "{failures_now}");
    assert_eq!(
        entra.requests("client_credentials"),
        1 + failures_now as usize
    );
    signal(&relay, libc::SIGTERM);
    assert!(relay.wait().unwrap().success());
}

/// Issue 22: one account's token requests failing (503, retry_delay 10 s), a SIGHUP took
/// 65 s, as the retiring generation waited for the token manager's back-off, and mail for
/// the other account stalled meanwhile. The waits end when the generation stops; a request
/// under way is left to finish without the reload waiting for it. A SIGTERM in a back-off
/// ends the relay at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_and_a_stop_do_not_wait_for_another_account_s_token_back_off() {
    use common::tokens::{SECRET, tenant};
    let (entra, exchange) = tenant().await;
    // Entra down for fabrikam's tenant.
    let failing = format!(
        "http://{}/token",
        common::http_answering("503 Service Unavailable", "Service Unavailable").await
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let path = two_accounts(
        &entra,
        &exchange,
        dir.path(),
        "[tokens]\nretry_delay = \"10s\"\n",
        "fabrikam",
        &format!(
            "client_secret_file = \"secret\"\ntoken_endpoint = {failing:?}\nsenders = [\"*@fabrikam.com\"]"
        ),
    );
    let key_hex = common::token_key_hex();
    let (mut relay, address, logs) =
        start_binary_with_logs(&path, &[("SMTPRELAY_TOKEN_KEY", key_hex.as_str())]);
    // fabrikam's first request failed, and its manager waits 10 s (±50%) to retry.
    let retrying = wait_for_log(&logs, "token request failed; retrying");
    assert_eq!(retrying["account"], "fabrikam", "{retrying}");
    // Mail for fabrikam waits for its token meanwhile; contoso's flows.
    let mut client = Client::connect(address).await;
    client.expect("EHLO printer", 250).await;
    let (code, text) = client
        .send_message(
            "printer@fabrikam.com",
            &["a@example.com"],
            b"Subject: held\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");

    let started = std::time::Instant::now();
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the reload took {took:?}");

    // Through the new generation, contoso's mail goes at once.
    let (code, text) = client
        .send_message(
            "scanner@contoso.com",
            &["b@example.com"],
            b"Subject: through\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while exchange.state().received.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "contoso's mail stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        exchange.state().received.len(),
        1,
        "fabrikam's has no token"
    );
    drop(client);

    // fabrikam's new manager waits too (the floor after the last request, then back-off):
    // a stop ends that wait.
    let started = std::time::Instant::now();
    signal(&relay, libc::SIGTERM);
    let status = relay.wait().unwrap();
    let took = started.elapsed();
    assert!(status.success());
    assert!(took < Duration::from_secs(1), "the stop took {took:?}");
}

/// Issue 22, point 2: the token manager is the process's, and a reload reconfigures it. A
/// SIGHUP while the token endpoint takes 3 s to answer neither waits for the request nor
/// makes another: the new generation's mail goes with that request's token as soon as it
/// comes (with a one-hour floor between requests, a second request could not have been made
/// in time). An account the reload adds gets its token and its mail goes; the first account
/// still made one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_token_request_neither_waits_for_it_nor_asks_again() {
    use common::tokens::{SECRET, secret_account, tenant};
    let (entra, exchange) = tenant().await;
    entra.state().delay = Some(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let path = dir.path().join("smtprelay.toml");
    let head = "[server]\nhostname = \"relay.test\"\nstate_dir = \"state\"\n\
                [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
                [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n[tokens]\nmin_request_interval = \"5m\"\n";
    let contoso = format!(
        "{}senders = [\"*@contoso.com\"]\n{}",
        secret_account(&entra),
        exchange.upstream_table(dir.path())
    );
    std::fs::write(&path, format!("{head}{contoso}")).unwrap();
    let key_hex = common::token_key_hex();
    let (mut relay, address, logs) =
        start_binary_with_logs(&path, &[("SMTPRELAY_TOKEN_KEY", key_hex.as_str())]);
    // The app-only account asks for its first token at start; Entra holds the answer 3 s.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while entra.requests("client_credentials") == 0 {
        assert!(std::time::Instant::now() < deadline, "no token request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = std::time::Instant::now();
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the reload took {took:?}");

    let mut client = Client::connect(address).await;
    client.expect("EHLO printer", 250).await;
    let (code, text) = client
        .send_message(
            "scanner@contoso.com",
            &["a@example.com"],
            b"Subject: after the reload\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while exchange.state().received.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the mail waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(entra.requests("client_credentials"), 1);

    // A reload that adds an account: its first token is asked for, and its mail goes.
    entra.state().delay = None;
    let fabrikam = common::tokens::account(
        &entra,
        "fabrikam",
        "app-secret",
        "client_credentials",
        "client_secret_file = \"secret\"\nsenders = [\"*@fabrikam.com\"]",
    );
    std::fs::write(
        &path,
        format!(
            "{head}{contoso}{fabrikam}{}",
            exchange.upstream_table(dir.path())
        ),
    )
    .unwrap();
    signal(&relay, libc::SIGHUP);
    wait_for_log(&logs, "configuration reloaded");
    let (code, text) = client
        .send_message(
            "printer@fabrikam.com",
            &["b@example.com"],
            b"Subject: new account\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while exchange.state().received.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new account's mail waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(entra.requests("client_credentials"), 2);
    drop(client);
    signal(&relay, libc::SIGTERM);
    assert!(relay.wait().unwrap().success());
}
