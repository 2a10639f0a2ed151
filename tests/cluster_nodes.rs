//! Three `smtprelay serve` processes sending as one mailbox, sharing a real `redis-server`,
//! against the Entra and Exchange doubles: Exchange sees one sender's limits kept (the rate
//! in every window, three sessions at once), through a Redis pause and an empty restart
//! every message arrives exactly once, a killed node's connections are given back, and the
//! three make one token request per token lifetime (a delegated account whose refresh
//! tokens Entra accepts once each, logged in once with the CLI against Redis).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use common::exchange::Exchange;
use common::redis::RedisServer;
use common::tokens::{SECRET, account, tenant};
use common::{Client, start_binary_with_admin};

const MAILBOX: &str = "relay@contoso.com";
/// The mailbox's limits in the tests that pace: as many sessions as Exchange allows one
/// client (each node alone would use them all), and a rate a test can watch.
const PACED: &str = "rate = \"20/10s\"\nmax_connections = 3\n";

struct Node {
    child: Child,
    smtp: SocketAddr,
    admin: SocketAddr,
    _logs: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// How the nodes' account gets its tokens.
#[derive(Clone, Copy, PartialEq)]
enum Login {
    /// Client credentials: each node could ask on its own.
    AppOnly,
    /// Device code: an admin logs in once, with the CLI on the first node.
    Delegated,
}

/// Three nodes, each with its own spool, configured alike apart from their names.
async fn cluster(
    entra: &common::entra::Entra,
    exchange: &Exchange,
    redis: &RedisServer,
    upstream: &str,
) -> Cluster {
    cluster_with(entra, exchange, redis, upstream, Login::AppOnly).await
}

async fn cluster_with(
    entra: &common::entra::Entra,
    exchange: &Exchange,
    redis: &RedisServer,
    upstream: &str,
    login: Login,
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let key_hex = common::token_key_hex();
    let env = [("SMTPRELAY_TOKEN_KEY", key_hex.as_str())];
    let table = match login {
        Login::AppOnly => account(
            entra,
            "contoso",
            "app-secret",
            "client_credentials",
            &format!("client_secret_file = {:?}", dir.path().join("secret")),
        ),
        Login::Delegated => account(entra, "contoso", "app-public", "device_code", ""),
    };
    let configs: Vec<_> = (1..=3)
        .map(|n| {
            let node_dir = dir.path().join(format!("node{n}"));
            node_config(
                &node_dir,
                &format!("node{n}"),
                &table,
                exchange,
                redis,
                upstream,
            )
        })
        .collect();
    if login == Login::Delegated {
        device_login(entra, &configs[0], &env).await;
    }
    let mut nodes = Vec::new();
    for config in &configs {
        let (child, smtp, admin, logs) = start_binary_with_admin(config, &env);
        nodes.push(Node {
            child,
            smtp,
            admin: admin.expect("the admin endpoint listens"),
            _logs: logs,
        });
    }
    let cluster = Cluster { nodes, _dir: dir };
    // Budgets are counted in Redis once every node is in the list.
    for node in &cluster.nodes {
        let deadline = Instant::now() + common::TIMEOUT;
        loop {
            let health = health(node.admin).await;
            if health["cluster"]["mode"] == "shared"
                && health["cluster"]["nodes"].as_array().map(Vec::len) == Some(3)
            {
                break;
            }
            assert!(Instant::now() < deadline, "{health}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster
}

/// `smtprelay token login` on one node, approved at the Entra double as the user would.
/// One node's configuration file in `node_dir` (its state in `node_dir/state`).
fn node_config(
    node_dir: &std::path::Path,
    name: &str,
    table: &str,
    exchange: &Exchange,
    redis: &RedisServer,
    upstream: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(node_dir).unwrap();
    let config = node_dir.join("smtprelay.toml");
    let text = format!(
        "[server]\nhostname = \"{name}.test\"\nstate_dir = \"state\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
         {table}{}{upstream}\n\
         [cluster]\nredis_url = \"{}\"\nnode_name = \"{name}\"\nnodes = 3\n",
        exchange.upstream_table(node_dir),
        redis.url(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

async fn device_login(
    entra: &common::entra::Entra,
    config: &std::path::Path,
    env: &[(&str, &str)],
) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .arg("--config")
        .arg(config)
        .args(["token", "login", "--account", "contoso"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let printed = common::tokens::approve_device_login(entra, child.stdout.take().unwrap()).await;
    assert!(child.wait().await.unwrap().success(), "{printed}");
    assert!(
        printed.contains("stored encrypted in Redis at"),
        "{printed}"
    );
}

async fn health(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = common::http_get(&format!("http://{admin}/health")).await;
    serde_json::from_str(&body).unwrap()
}

async fn send(address: SocketAddr, subjects: impl IntoIterator<Item = usize>) {
    let mut client = Client::connect(address).await;
    client.expect("EHLO app", 250).await;
    for n in subjects {
        let data = format!("Subject: message {n}\r\n\r\nmessage {n}\r\n");
        let (code, text) = client
            .send_message("scanner@contoso.com", &["a@fabrikam.com"], data.as_bytes())
            .await;
        assert_eq!(code, 250, "{text}");
    }
}

/// Sends messages `range` round-robin through the nodes.
async fn send_through(cluster: &Cluster, range: std::ops::Range<usize>) {
    let mut per_node: HashMap<usize, Vec<usize>> = HashMap::new();
    for n in range {
        per_node.entry(n % cluster.nodes.len()).or_default().push(n);
    }
    for (node, subjects) in per_node {
        send(cluster.nodes[node].smtp, subjects).await;
    }
}

/// Waits until Exchange has `count` messages; if `limit` passes first, fails with what the
/// nodes and Redis say about why mail waits.
async fn received(
    exchange: &Exchange,
    count: usize,
    limit: Duration,
    cluster: &Cluster,
    redis: &RedisServer,
) {
    let deadline = Instant::now() + limit;
    while exchange.state().received.len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrived = exchange.state().received.len();
    if arrived >= count {
        return;
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        while let Ok(line) = node._logs.try_recv() {
            if line["level"] != "INFO" {
                eprintln!("node {i} log: {line}");
            }
        }
        eprintln!("node {i} /health: {}", health(node.admin).await);
    }
    for key in ["rate", "conn:smtp"] {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "ZRANGE"])
            .arg(format!("smtprelay:{key}:{MAILBOX}"))
            .args(["0", "-1", "WITHSCORES"])
            .output()
            .unwrap();
        eprintln!("redis {key}: {}", String::from_utf8_lossy(&output.stdout));
    }
    panic!("{arrived} of {count} arrived");
}

/// The most messages Exchange accepted within any `period` (windows starting at a message).
fn busiest_window(exchange: &Exchange, period: Duration) -> usize {
    let times = exchange.state().accepted_at.clone();
    times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t - *start < period)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Each message once, by its subject.
fn arrivals(exchange: &Exchange) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in &exchange.state().received {
        let text = String::from_utf8_lossy(&message.data);
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_owned();
        *seen.entry(subject).or_default() += 1;
    }
    seen
}

/// Issue 22: three nodes on one host under the default name (the host name) were one node
/// to the cluster and sent past the limits. A second `serve` under a live name stops at
/// start, naming the name and the node that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_under_a_live_name_refuses_to_start() {
    let (entra, exchange) = tenant().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let key_hex = common::token_key_hex();
    let env = [("SMTPRELAY_TOKEN_KEY", key_hex.as_str())];
    let table = account(
        &entra,
        "contoso",
        "app-secret",
        "client_credentials",
        &format!("client_secret_file = {:?}", dir.path().join("secret")),
    );
    let first_dir = dir.path().join("first");
    let first = node_config(&first_dir, "relay", &table, &exchange, &redis, PACED);
    let second = node_config(
        &dir.path().join("second"),
        "relay",
        &table,
        &exchange,
        &redis,
        PACED,
    );
    let (child, smtp, admin, logs) = start_binary_with_admin(&first, &env);
    let _first = Node {
        child,
        smtp,
        admin: admin.expect("the admin endpoint listens"),
        _logs: logs,
    };
    let output = tokio::time::timeout(
        common::TIMEOUT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .args(["serve", "--config"])
            .arg(&second)
            .envs(env)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second node did not stop")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(r#"node_name \"relay\""#), "{stderr}");
    assert!(
        stderr.contains(&first_dir.join("state").display().to_string()),
        "names the other node: {stderr}"
    );
    assert!(!stderr.contains("\"listening\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_one_mailbox_s_rate_and_session_limit_together() {
    let (entra, exchange) = tenant().await;
    let redis = RedisServer::start();
    let cluster = cluster(&entra, &exchange, &redis, PACED).await;

    send_through(&cluster, 0..50).await;
    received(&exchange, 50, Duration::from_secs(90), &cluster, &redis).await;

    // Each node alone would send 20 in a window; together they did not either.
    let busiest = busiest_window(&exchange, Duration::from_secs(10));
    assert!(busiest <= 20, "{busiest} messages within 10 s");
    assert!(busiest >= 15, "the budget was barely used: {busiest}");
    // One token for the three nodes: one asked, the others used what it stored.
    assert_eq!(entra.requests("client_credentials"), 1);
    // Nine workers (three per node, as many as Exchange allows one client), never more
    // than three sessions for the mailbox.
    let peak = exchange.state().peak_sessions[MAILBOX];
    assert!(peak <= 3, "{peak} sessions at once");
    assert!(arrivals(&exchange).values().all(|n| *n == 1));

    // Every node lists the three, and says so on /metrics.
    let report = health(cluster.nodes[1].admin).await;
    let mut names: Vec<&str> = report["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["node1", "node2", "node3"], "{report}");
    let (_, metrics) =
        common::http_get(&format!("http://{}/metrics", cluster.nodes[2].admin)).await;
    assert!(metrics.contains("smtprelay_cluster_nodes 3"), "{metrics}");
    assert!(
        metrics.contains("smtprelay_cluster_redis_up 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_then_restarted_empty_mid_run_delivers_every_message_once() {
    let (entra, exchange) = tenant().await;
    let mut redis = RedisServer::start();
    let cluster = cluster(&entra, &exchange, &redis, PACED).await;

    send_through(&cluster, 0..15).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.pause();
    let paused = Instant::now();
    send_through(&cluster, 15..30).await;
    // /health says why sending is slower.
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let report = health(cluster.nodes[0].admin).await;
        if report["status"] == "degraded" && report["cluster"]["mode"] == "own_share" {
            assert!(
                report["reasons"].to_string().contains("unreachable"),
                "{report}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(paused.elapsed())).await;
    redis.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart_empty();
    send_through(&cluster, 30..45).await;

    received(&exchange, 45, Duration::from_secs(120), &cluster, &redis).await;
    // Nothing more comes: every message exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = arrivals(&exchange);
    assert_eq!(seen.len(), 45, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let busiest = busiest_window(&exchange, Duration::from_secs(10));
    assert!(busiest <= 20, "{busiest} messages within 10 s");
    for node in &cluster.nodes {
        let report = health(node.admin).await;
        assert_eq!(report["cluster"]["mode"], "shared", "{report}");
    }
    // The token at hand kept working while Redis was away, and went back into it.
    assert_eq!(entra.requests("client_credentials"), 1);
    let deadline = Instant::now() + common::TIMEOUT;
    while redis.bulk("HGET smtprelay:tokens contoso").is_none() {
        assert!(
            Instant::now() < deadline,
            "the nodes did not put their token back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_sessions_are_given_back_and_the_others_go_on() {
    let (entra, exchange) = tenant().await;
    let redis = RedisServer::start();
    // Slow answers (within the command timeout) keep the first node's three sessions busy
    // when it dies.
    exchange.state().slow = Some(Duration::from_secs(8));
    let mut cluster = cluster(&entra, &exchange, &redis, "max_connections = 3\n").await;
    let leases = "ZCARD smtprelay:conn:smtp:relay@contoso.com";

    send(cluster.nodes[0].smtp, 0..6).await;
    let deadline = Instant::now() + common::TIMEOUT;
    while redis.integer(leases) < 3 || exchange.state().open_sessions[MAILBOX] < 3 {
        assert!(
            Instant::now() < deadline,
            "node1 never took three sessions: {} leases, {:?} open",
            redis.integer(leases),
            exchange.state().open_sessions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut killed = cluster.nodes.remove(0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let died = Instant::now();
    exchange.state().slow = None;

    send(cluster.nodes[0].smtp, 100..103).await;
    send(cluster.nodes[1].smtp, 200..203).await;
    let survivors: Vec<String> = (100..103)
        .chain(200..203)
        .map(|n| format!("message {n}"))
        .collect();
    let deadline = Instant::now() + common::TIMEOUT;
    while !survivors
        .iter()
        .all(|s| arrivals(&exchange).get(s) == Some(&1))
    {
        assert!(Instant::now() < deadline, "{:?}", arrivals(&exchange));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dead node's three leases kept the mailbox's sessions taken until they ran out
    // (renewed every 2 s for 6 s), and not much longer.
    let first = {
        let state = exchange.state();
        state
            .received
            .iter()
            .zip(&state.accepted_at)
            .filter(|(m, _)| {
                let text = String::from_utf8_lossy(&m.data);
                survivors.iter().any(|s| text.contains(s.as_str()))
            })
            .map(|(_, at)| *at)
            .min()
            .unwrap()
    };
    let after = first.duration_since(died);
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(15),
        "the survivors sent {after:?} after the kill"
    );
    // The survivors list two nodes once the dead one's heartbeat is old.
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let report = health(cluster.nodes[0].admin).await;
        if report["cluster"]["nodes"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_make_one_token_request_per_token_lifetime() {
    let (entra, exchange) = tenant().await;
    // Tokens live 10 s and are renewed 5 s before they run out: one request every 5 s, from
    // whichever node gets there first. Entra answers slowly, so the others are due too
    // while it does, and must wait for what it stores.
    entra.state().access_token_lifetime = 10;
    let mut redis = RedisServer::start();
    let cluster = cluster_with(
        &entra,
        &exchange,
        &redis,
        // The floor between one node's requests at its least: the three share one request
        // per 5 s, which the default (15 s) would make them take turns for.
        "rate = \"10000/min\"\n[tokens]\nrefresh_before = \"5s\"\nmin_request_interval = \"1s\"\n",
        Login::Delegated,
    )
    .await;
    entra.state().delay = Some(Duration::from_millis(1500));
    let start = Instant::now();
    let mut holders = std::collections::HashSet::new();
    let (mut sent, mut restarted) = (0, false);
    let (mut said_in_text, mut said_in_metrics) = (false, false);
    while start.elapsed() < Duration::from_secs(22) {
        if !restarted && start.elapsed() > Duration::from_secs(11) {
            // The nodes put back the tokens they hold: nobody logs in again.
            redis.restart_empty();
            restarted = true;
        }
        send_through(&cluster, sent..sent + 3).await;
        sent += 3;
        for node in &cluster.nodes {
            let report = health(node.admin).await;
            if let Some(holder) = report["accounts"][0]["refresh_lock_holder"].as_str() {
                holders.insert(holder.to_owned());
            }
            let (_, text) = common::http_get(&format!("http://{}/status.txt", node.admin)).await;
            said_in_text |= text.contains("is getting a new token");
            let (_, metrics) = common::http_get(&format!("http://{}/metrics", node.admin)).await;
            said_in_metrics |= metrics
                .contains("smtprelay_token_refresh_lock_held{account=\"contoso\",node=\"node");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    received(&exchange, sent, Duration::from_secs(60), &cluster, &redis).await;
    assert!(arrivals(&exchange).values().all(|n| *n == 1));

    // Entra takes each refresh token once: a second request for the same lifetime would
    // have been refused (invalid_grant) and the account would need a login.
    let times = entra.request_times("refresh_token");
    assert!(times.len() >= 3, "{} refreshes in 22 s", times.len());
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_secs(3),
            "two token requests {gap:?} apart: {times:?}"
        );
    }
    for node in &cluster.nodes {
        let report = health(node.admin).await;
        let account = &report["accounts"][0];
        assert_eq!(account["state"], "valid", "{report}");
        assert_eq!(account["unsaved"], false, "{report}");
        let (_, metrics) = common::http_get(&format!("http://{}/metrics", node.admin)).await;
        assert!(
            metrics.contains("smtprelay_token_unsaved{account=\"contoso\"} 0"),
            "{metrics}"
        );
    }
    // The nodes that waited saw who asked for them.
    assert!(!holders.is_empty(), "no node was seen asking Entra");
    assert!(said_in_text, "/status.txt never named the node asking");
    assert!(said_in_metrics, "/metrics never named the node asking");
    assert!(
        holders
            .iter()
            .all(|h| ["node1", "node2", "node3"].contains(&h.as_str())),
        "{holders:?}"
    );
    // Sealed in Redis again after its restart, at a revision above the ones before.
    let stored = redis
        .bulk("HGET smtprelay:tokens contoso")
        .expect("tokens in Redis");
    let revision: u64 = stored.split(':').next().unwrap().parse().unwrap();
    assert!(revision > times.len() as u64, "{stored}");
}
