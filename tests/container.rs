//! The container image (packaging/container/build.sh), unpacked into a runc bundle by
//! packaging/container/test.sh and run under runc as a runtime runs it: the image's own
//! entrypoint, command, user and environment, a read-only root, the configuration mounted
//! read-only, the state in a volume. It relays a message to the Exchange double from inside,
//! answers `smtprelay health`, and stops on SIGTERM to its PID 1 with the queue intact.
//! Needs root, runc and the bundle's path in `SMTPRELAY_CONTAINER_BUNDLE`, hence ignored by
//! a plain `cargo test`.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::installed::delivered;
use common::tokens::{SECRET, account, tenant};

fn bundle() -> PathBuf {
    PathBuf::from(
        std::env::var_os("SMTPRELAY_CONTAINER_BUNDLE")
            .expect("SMTPRELAY_CONTAINER_BUNDLE: the bundle packaging/container/test.sh made"),
    )
}

/// The image's config (User, Entrypoint, …), which bundle.py keeps in an annotation.
fn image_config(spec: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(
        spec["annotations"]["smtprelay.image-config"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

fn runc(args: &[&str]) -> std::process::Output {
    Command::new("runc")
        .args(args)
        .output()
        .expect("runc is installed")
}

#[test]
#[ignore = "needs root, runc and the bundle from packaging/container/test.sh"]
fn the_image_runs_as_a_non_root_user_without_a_shell() {
    let bundle = bundle();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let image = image_config(&spec);
    assert_eq!(image["User"], "10001:10001");
    assert_eq!(
        image["Entrypoint"],
        serde_json::json!(["/usr/bin/smtprelay"])
    );
    assert_eq!(
        image["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/smtprelay/smtprelay.toml"])
    );
    assert_eq!(image["StopSignal"], "SIGTERM");
    assert!(image["Volumes"]["/var/lib/smtprelay"].is_object());
    assert_eq!(
        image["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/bin/smtprelay", "health"])
    );
    let rootfs = bundle.join("rootfs");
    for shell in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "usr/bin/apt",
        "usr/bin/dpkg",
    ] {
        assert!(!rootfs.join(shell).exists(), "the image holds /{shell}");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("smtprelay:x:10001:10001:"), "{passwd}");
    assert!(
        rootfs
            .join("usr/share/doc/smtprelay/config-reference.toml")
            .exists()
    );
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").exists());
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata(rootfs.join("var/lib/smtprelay")).unwrap();
    assert_eq!((state.uid(), state.gid()), (10001, 10001));
}

/// Writes `text` to `dir/name`, readable by the container's user (the runtime mounts the
/// directory read-only; Kubernetes secrets and configmaps arrive world-readable too).
fn put(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and the bundle from packaging/container/test.sh"]
async fn the_image_relays_a_message_and_stops_on_sigterm_with_the_queue_intact() {
    let bundle = bundle();
    let (entra, exchange) = tenant().await;
    // One recipient the upstream keeps deferring: its message must still be queued after
    // the stop.
    exchange.state().rcpt_replies.insert(
        "later@fabrikam.com".into(),
        "451 4.3.0 Temporary server error".into(),
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = work.path().join("etc");
    let state = work.path().join("state");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(10001), Some(10001)).unwrap();

    // The image's own configuration, with the doubles' account and loopback ports (the
    // container shares the host's network here).
    let shipped =
        std::fs::read_to_string(bundle.join("rootfs/etc/smtprelay/smtprelay.toml")).unwrap();
    let mut document: toml_edit::DocumentMut = shipped.parse().unwrap();
    // The SMTP listener takes any free port (the log says which). The admin endpoint needs
    // a known one: the HEALTHCHECK's `smtprelay health` finds it in the configuration.
    let admin_port = common::free_port();
    document["listen"][0]["address"] = toml_edit::value("127.0.0.1:0");
    document["admin"]["listen"] = toml_edit::value(format!("127.0.0.1:{admin_port}"));
    let config = format!(
        "{document}\n{}[account.upstream]\nhost = \"localhost\"\nport = {}\nca_file = \"/etc/smtprelay/upstream-ca.pem\"\n",
        account(
            &entra,
            "contoso",
            "app-secret",
            "client_credentials",
            "client_secret_file = \"/etc/smtprelay/contoso.secret\"\nsenders = [\"*\"]\n"
        ),
        exchange.addr.port()
    );
    put(&etc, "smtprelay.toml", &config);
    put(&etc, "contoso.secret", SECRET);
    put(&etc, "upstream-ca.pem", &exchange.pki.ca_pem);
    put(&etc, "token.key", &common::token_key_hex());

    // The runtime's part: the configuration read-only, the state volume read-write.
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| {
        m["destination"] != "/etc/smtprelay" && m["destination"] != "/var/lib/smtprelay"
    });
    mounts.push(
        serde_json::json!({"destination": "/etc/smtprelay", "type": "bind",
        "source": etc, "options": ["rbind", "ro"]}),
    );
    mounts.push(
        serde_json::json!({"destination": "/var/lib/smtprelay", "type": "bind",
        "source": state, "options": ["rbind", "rw"]}),
    );
    // Renamed into place: the other test reads the spec meanwhile, and must never see it
    // half written (an empty file once made it fail in CI).
    let written = bundle.join("config.json.new");
    std::fs::write(&written, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    std::fs::rename(&written, &spec_path).unwrap();

    let id = format!("smtprelay-test-{}", std::process::id());
    let mut container = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runc is installed");
    // Logs go to the container's stderr, as JSON (the image's default).
    let (tx, logs) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = container.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            match serde_json::from_str(&line) {
                Ok(event) => {
                    let _ = tx.send(event);
                }
                Err(_) => eprintln!("container: {line}"),
            }
        }
    });
    let port: u16 = common::wait_for_log(&logs, "listening")["address"]
        .as_str()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .expect("the listening line names the address")
        .port();

    common::installed::send(port, b"Subject: from the container\r\n\r\nscanned\r\n").await;
    delivered(&exchange, 1).await;
    assert_eq!(exchange.state().received[0].mailbox, "relay@contoso.com");

    // The HEALTHCHECK's command, inside the running container.
    let health = tokio::task::spawn_blocking({
        let id = id.clone();
        move || runc(&["exec", &id, "/usr/bin/smtprelay", "health"])
    })
    .await
    .unwrap();
    assert_eq!(health.status.code(), Some(0), "{health:?}");
    assert!(
        String::from_utf8_lossy(&health.stdout).starts_with("healthy"),
        "{health:?}"
    );
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let unreachable = tokio::task::spawn_blocking({
        let id = id.clone();
        move || {
            runc(&[
                "exec",
                &id,
                "/usr/bin/smtprelay",
                "health",
                "--url",
                &closed,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");

    // A message the upstream defers stays queued across the stop.
    let mut client = common::Client::connect(([127, 0, 0, 1], port).into()).await;
    client.expect("EHLO printer", 250).await;
    let (code, text) = client
        .send_message(
            "scanner@contoso.com",
            &["later@fabrikam.com"],
            b"Subject: later\r\n\r\nlater\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let queue_id = text.rsplit(' ').next().unwrap().to_owned();
    client.expect("QUIT", 221).await;
    let deferred = common::wait_for_log(&logs, "deferred");
    assert_eq!(deferred["queue_id"], queue_id.as_str(), "{deferred}");

    // SIGTERM to PID 1, as `docker stop` and the kubelet send it.
    let stopping = Instant::now();
    let kill = runc(&["kill", &id, "TERM"]);
    assert!(kill.status.success(), "{kill:?}");
    let status = tokio::task::spawn_blocking(move || container.wait().unwrap())
        .await
        .unwrap();
    let took = stopping.elapsed();
    eprintln!("the container stopped {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let _ = runc(&["delete", "--force", &id]);
    let queued = state.join("spool/queue").join(format!("{queue_id}.msg"));
    assert!(queued.exists(), "{} is gone", queued.display());
}
