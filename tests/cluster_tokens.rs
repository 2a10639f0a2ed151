//! The cluster's token store in a real `redis-server`: tokens sealed as on disk, written
//! only over the revision the writer read, one node at a time asking Entra (the others wait
//! for what it stores), and a Redis that pauses or forgets costs no token.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use common::tokens::{SECRET, TokenFixture, app, secret_account};
use smtprelay::cluster::Cluster;
use smtprelay::cluster::tokens::{FLIGHT_TTL, RedisStore};
use smtprelay::config::ClusterConfig;
use smtprelay::oauth::http::TokenClient;
use smtprelay::oauth::manager::TokenManager;
use smtprelay::oauth::store::{Flight, Saved, StoreError, StoredTokens, TokenStore, Write};
use smtprelay::oauth::{Secret, TokenKey};

fn connect(redis: &RedisServer, name: &str) -> Cluster {
    Cluster::connect(&ClusterConfig {
        redis_url: redis.url().parse().unwrap(),
        ca_file: None,
        password_file: None,
        key_prefix: "test:".into(),
        node_name: name.into(),
        nodes: None,
    })
    .unwrap()
}

fn tokens(access: &str) -> StoredTokens {
    StoredTokens {
        access_token: Some(Secret::new(access)),
        expires_at: 1_900_000_000,
        refresh_token: Some(Secret::new(format!("refresh-{access}"))),
        ..Default::default()
    }
}

async fn written(store: &RedisStore, account: &str, t: Option<&StoredTokens>, write: Write) -> u64 {
    match store.save(account, t, write).await.unwrap() {
        Saved::Written { revision } => revision,
        Saved::Conflict => panic!("{account}: conflict"),
    }
}

fn over(revision: u64) -> Write {
    Write::Over {
        revision,
        after: revision,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_redis_are_sealed_and_only_written_over_the_revision_read() {
    let mut redis = RedisServer::start();
    let key = TokenKey::generate();
    let a = connect(&redis, "a").token_store(key.clone());
    let b = connect(&redis, "b").token_store(key.clone());
    assert_eq!(a.version().await.unwrap(), None);

    assert_eq!(
        written(&a, "contoso", Some(&tokens("AT-1")), Write::Replace).await,
        1
    );
    let raw = redis.bulk("HGET test:tokens contoso").unwrap();
    assert!(
        raw.starts_with("1:") && !raw.contains("AT-1") && !raw.contains("refresh"),
        "{raw}"
    );
    let seen = b.load("contoso").await.unwrap().unwrap();
    assert_eq!((seen.revision, seen.tokens), (1, Some(tokens("AT-1"))));
    let version = a.version().await.unwrap();

    // Both refreshed from revision 1: the first write wins, the second is refused.
    assert_eq!(
        written(&a, "contoso", Some(&tokens("AT-2")), over(1)).await,
        2
    );
    assert_eq!(
        b.save("contoso", Some(&tokens("AT-stale")), over(1))
            .await
            .unwrap(),
        Saved::Conflict
    );
    assert_eq!(
        b.load("contoso").await.unwrap().unwrap().tokens,
        Some(tokens("AT-2"))
    );
    assert_ne!(b.version().await.unwrap(), version);

    // A removal leaves the revision behind; an absent account is another thing.
    assert_eq!(written(&b, "contoso", None, Write::Replace).await, 3);
    let removed = a.load("contoso").await.unwrap().unwrap();
    assert_eq!((removed.revision, removed.tokens), (3, None));
    assert_eq!(a.load("fabrikam").await.unwrap(), None);
    // Putting back what a store lost: at the revision the node held, and the newest wins
    // whichever node comes first (an older one holds a refresh token Entra may have taken).
    let older = Write::Restore { revision: 9 };
    let newer = Write::Restore { revision: 10 };
    assert_eq!(written(&a, "fabrikam", Some(&tokens("F9")), older).await, 9);
    assert_eq!(
        written(&b, "fabrikam", Some(&tokens("F10")), newer).await,
        10
    );
    for late in [older, newer] {
        assert_eq!(
            a.save("fabrikam", Some(&tokens("late")), late)
                .await
                .unwrap(),
            Saved::Conflict
        );
    }
    assert_eq!(
        a.load("fabrikam").await.unwrap().unwrap().tokens,
        Some(tokens("F10"))
    );

    // A restore holds exactly the backup's accounts, each at a new revision.
    let mut backup = BTreeMap::new();
    backup.insert("contoso".to_owned(), tokens("restored"));
    a.replace_all(backup).await.unwrap();
    let all = b.load_all().await.unwrap();
    assert_eq!(
        (all["contoso"].revision, &all["contoso"].tokens),
        (4, &Some(tokens("restored")))
    );
    assert_eq!(
        (all["fabrikam"].revision, &all["fabrikam"].tokens),
        (11, &None)
    );

    // Another key cannot read them, and says which account it could not open.
    let stranger = connect(&redis, "c").token_store(TokenKey::generate());
    match stranger.load_all().await {
        Err(StoreError::Decrypt { account, .. }) => assert_eq!(account, "contoso"),
        other => panic!("{other:?}"),
    }

    // A Redis that restarted empty is a new version, even once it counts up again.
    let before = a.version().await.unwrap();
    redis.restart_empty();
    let mut after = a.version().await;
    for _ in 0..20 {
        if after.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = a.version().await;
    }
    assert_eq!(after.unwrap(), None);
    assert_ne!(before, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_at_a_time_asks_for_a_token_and_holds_the_right_while_it_asks() {
    let redis = RedisServer::start();
    let key = TokenKey::generate();
    let a = connect(&redis, "node-a").token_store(key.clone());
    let b = connect(&redis, "node-b").token_store(key);
    let Flight::Mine(guard) = a.flight("contoso").await.unwrap() else {
        panic!("the first asks");
    };
    assert_eq!(guard.holder.as_deref(), Some("node-a"));
    match b.flight("contoso").await.unwrap() {
        Flight::Elsewhere { holder } => assert_eq!(holder, "node-a"),
        Flight::Mine(_) => panic!("two nodes hold the flight"),
    }
    // Other accounts are not held up.
    assert!(matches!(
        b.flight("fabrikam").await.unwrap(),
        Flight::Mine(_)
    ));
    // The lock runs out unless renewed, and the holder renews it while it asks.
    let ttl = redis.integer("PTTL test:token-lock:contoso");
    assert!(ttl > 0 && ttl <= FLIGHT_TTL.as_millis() as i64, "{ttl}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ttl = redis.integer("PTTL test:token-lock:contoso");
    assert!(
        ttl > FLIGHT_TTL.as_millis() as i64 - 6000,
        "not renewed: {ttl}"
    );
    guard.release().await;
    let Flight::Mine(guard) = b.flight("contoso").await.unwrap() else {
        panic!("released, but still held");
    };
    // Only its holder releases it: a stale release by the previous holder changes nothing.
    assert!(matches!(
        a.flight("contoso").await.unwrap(),
        Flight::Elsewhere { .. }
    ));
    drop(guard);
    // Dropped without release, it is released in the background.
    let mut free = false;
    for _ in 0..50 {
        if redis.integer("EXISTS test:token-lock:contoso") == 0 {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(free, "a dropped guard kept the lock");
}

/// Two token managers on one Redis, as two nodes have them.
async fn two_managers(
    fx: &TokenFixture,
    redis: &RedisServer,
) -> (Arc<TokenManager>, Arc<TokenManager>) {
    let mut managers = Vec::new();
    for name in ["node-a", "node-b"] {
        let store = connect(redis, name).token_store(fx.key.clone());
        let manager =
            TokenManager::new(&fx.config, Arc::new(store), TokenClient::new().unwrap()).await;
        managers.push(Arc::new(manager));
    }
    let b = managers.pop().unwrap();
    (managers.pop().unwrap(), b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_token_request_and_redis_away_costs_no_token() {
    let entra = common::entra::Entra::start().await;
    entra.register(smtprelay_app());
    let fx = TokenFixture::new(entra.clone(), secret_account).await;
    let redis = RedisServer::start();
    let (a, b) = two_managers(&fx, &redis).await;
    // Both need a token at once; the request is slow enough for both to be waiting.
    entra.state().delay = Some(Duration::from_millis(600));
    let (ta, tb) = tokio::join!(a.access_token("contoso"), b.access_token("contoso"));
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    assert_eq!(entra.requests("client_credentials"), 1);
    assert_eq!(ta.token, tb.token);
    entra.state().delay = None;

    // A refused token: both nodes are told, one asks, the other uses what it stored.
    a.invalidate("contoso", &ta.token);
    b.invalidate("contoso", &tb.token);
    let (ta2, tb2) = tokio::join!(a.access_token("contoso"), b.access_token("contoso"));
    assert_eq!(ta2.unwrap().token, tb2.unwrap().token);
    assert_eq!(entra.requests("client_credentials"), 2);
    let revision = a.statuses()[0].revision;

    // Redis paused: the token at hand keeps working without asking Redis.
    redis.pause();
    let cached = a.access_token("contoso").await.unwrap();
    assert_eq!(entra.requests("client_credentials"), 2);
    // Refused while Redis is away: the node asks Entra on its own and keeps the token unsaved.
    a.invalidate("contoso", &cached.token);
    let own = a.access_token("contoso").await.unwrap();
    assert_ne!(own.token, cached.token);
    assert!(a.statuses()[0].unsaved);
    redis.resume();
    // Once Redis answers, it is saved over the revision it was refreshed from, and the
    // other node takes it up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        a.reload_if_changed().await;
        b.reload_if_changed().await;
        let (sa, sb) = (&a.statuses()[0], &b.statuses()[0]);
        if !sa.unsaved && sb.revision == sa.revision && sa.revision > revision {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sa:?} {sb:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.access_token("contoso").await.unwrap().token, own.token);
    assert_eq!(entra.requests("client_credentials"), 3);
}

fn smtprelay_app() -> common::entra::App {
    common::entra::App {
        secret: Some(SECRET.into()),
        ..app("app-secret")
    }
}

/// Runs `smtprelay --config CONFIG ARGS` with the token key; (success, stdout + stderr).
async fn cli(config: &std::path::Path, key: &str, args: &[&str]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_smtprelay"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("SMTPRELAY_TOKEN_KEY", key)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("command hung")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn status(config: &std::path::Path, key: &str) -> serde_json::Value {
    let (ok, text) = cli(config, key, &["token", "status", "--json"]).await;
    assert!(ok, "{text}");
    // stdout first, the log (stderr) after it.
    let json = serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    json[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cli_works_on_redis_and_moves_tokens_between_the_file_and_redis() {
    let (entra, _exchange) = common::tokens::tenant().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let key = common::token_key_hex();
    let single_node = format!(
        "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n{}",
        secret_account(&entra)
    );
    let single = dir.path().join("single.toml");
    std::fs::write(&single, &single_node).unwrap();
    let clustered = dir.path().join("cluster.toml");
    std::fs::write(
        &clustered,
        format!(
            "{single_node}[cluster]\nredis_url = \"{}\"\nnode_name = \"admin\"\n",
            redis.url()
        ),
    )
    .unwrap();

    // A single node's tokens, in its file.
    let (ok, text) = cli(&single, &key, &["token", "refresh"]).await;
    assert!(ok, "{text}");
    let file = dir.path().join("state/tokens.json.enc");
    assert!(file.exists());
    // With [cluster], the store is Redis, empty so far.
    assert_eq!(status(&clustered, &key).await["state"], "no_token");
    let (ok, text) = cli(&clustered, &key, &["token", "restore"]).await;
    assert!(!ok && text.contains("name the backup"), "{text}");
    // The node's file moves into Redis, sealed.
    let (ok, text) = cli(
        &clustered,
        &key,
        &["token", "restore", file.to_str().unwrap()],
    )
    .await;
    assert!(
        ok && text.contains("Restored 1 account(s)") && text.contains("into Redis at"),
        "{text}"
    );
    let in_redis = status(&clustered, &key).await;
    assert_eq!(
        (in_redis["state"].as_str(), in_redis["revision"].as_u64()),
        (Some("valid"), Some(1))
    );
    assert!(
        redis
            .bulk("HGET smtprelay:tokens contoso")
            .unwrap()
            .starts_with("1:")
    );
    assert_eq!(entra.requests("client_credentials"), 1);

    // A refresh goes over the revision it read.
    let (ok, text) = cli(&clustered, &key, &["token", "refresh"]).await;
    assert!(ok, "{text}");
    assert_eq!(entra.requests("client_credentials"), 2);
    assert_eq!(status(&clustered, &key).await["revision"], 2);

    // Out of Redis into a file in the file store's format, which a single node restores.
    let backup = dir.path().join("from-redis.enc");
    let (ok, text) = cli(
        &clustered,
        &key,
        &["token", "backup", "--to", backup.to_str().unwrap()],
    )
    .await;
    assert!(
        ok && text.contains("Backed up 1 account(s) from Redis at"),
        "{text}"
    );
    let (ok, text) = cli(
        &single,
        &key,
        &["token", "restore", backup.to_str().unwrap()],
    )
    .await;
    assert!(ok && text.contains("Restored 1 account(s)"), "{text}");
    let restored = status(&single, &key).await;
    assert_eq!(restored["state"], "valid");
    assert_eq!(
        restored["last_refresh_at"],
        in_redis_refreshed(&clustered, &key).await
    );

    // Clearing leaves a removed entry at a new revision: the nodes take it as a logout.
    let (ok, text) = cli(&clustered, &key, &["token", "clear"]).await;
    assert!(
        ok && text.contains("tokens removed from Redis at"),
        "{text}"
    );
    assert_eq!(redis.bulk("HGET smtprelay:tokens contoso").unwrap(), "3:");
    assert_eq!(status(&clustered, &key).await["state"], "no_token");

    // Redis away: the commands say so.
    redis.pause();
    let (ok, text) = cli(&clustered, &key, &["token", "refresh"]).await;
    redis.resume();
    assert!(!ok && text.contains("unreachable"), "{text}");
}

async fn in_redis_refreshed(config: &std::path::Path, key: &str) -> serde_json::Value {
    status(config, key).await["last_refresh_at"].clone()
}
