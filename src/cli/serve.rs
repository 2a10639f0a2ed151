//! `smtprelay serve`: start-up, signal handling and graceful shutdown.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Metrics};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::oauth::http::TokenClient;
use crate::oauth::manager::TokenManager;
use crate::oauth::{FileStore, TokenKey};
use crate::queue::Spool;
use crate::smtp::listener::Server;
use crate::smtp::policy::Policy;
use crate::smtp::session::Intake;

pub fn run(config: Config) -> Result<ExitCode, ExitCode> {
    crate::logging::init(&config.log);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| {
        tracing::error!(error = %e, "cannot start the runtime");
        ExitCode::FAILURE
    })?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<ExitCode, ExitCode> {
    let fail = |message: String| {
        tracing::error!("{message}");
        ExitCode::FAILURE
    };
    let tls = match &config.tls {
        Some(tls) => Some(crate::smtp::tls::acceptor(tls).map_err(|e| fail(e.to_string()))?),
        None => None,
    };
    let (spool, recovery) =
        Spool::open(&config.spool_dir(), config.queue.fsync).map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        spool = %config.spool_dir().display(),
        queued = recovery.queued,
        removed_incomplete = recovery.removed_incomplete,
        moved_to_corrupt = recovery.moved_to_corrupt,
        "spool opened"
    );
    if !config.queue.fsync {
        tracing::warn!("queue.fsync = false: accepted mail can be lost in a power failure");
    }
    let shutdown = CancellationToken::new();
    let tokens = start_token_manager(&config, &shutdown);
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let intake = Arc::new(Intake {
        policy: Policy::new(&config),
        config: Arc::clone(&config),
        spool: Arc::clone(&spool),
        tls,
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
    });
    let server = Server::bind(Arc::clone(&intake))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let admin_token = crate::admin::bearer_token(&config)
        .map_err(|e| fail(format!("[admin] bearer_token_file: {e}")))?;
    let admin_listener = match config.admin.listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| fail(format!("[admin] cannot listen on {address}: {e}")))?,
        ),
        None => None,
    };
    // Installed before the listeners announce themselves, so a SIGTERM that follows the
    // "listening" line is always a graceful stop.
    let signals =
        Signals::install().map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    tokio::spawn(signals.stop_on_signal(shutdown.clone()));
    let admin = admin_listener.map(|listener| {
        let admin = Arc::new(Admin {
            bearer_token: admin_token.clone(),
            config: Arc::clone(&config),
            spool: Arc::clone(&spool),
            tokens: tokens.as_ref().map(|(manager, _)| Arc::clone(manager)),
            metrics: Arc::clone(&metrics),
        });
        tokio::spawn(crate::admin::serve(listener, admin, shutdown.clone()))
    });
    let alerts = (config.alerts.webhook.is_some() || config.alerts.email.is_some()).then(|| {
        let alerter = crate::admin::alerts::Alerter::new(
            Arc::clone(&config),
            Arc::clone(&spool),
            tokens.as_ref().map(|(manager, _)| Arc::clone(manager)),
        );
        tokio::spawn(alerter.run(shutdown.clone()))
    });
    let delivery = tokens.map(|(manager, refresher)| {
        let delivery = Delivery::new(
            Arc::clone(&spool),
            manager,
            Arc::clone(&config),
            Arc::clone(&metrics),
        );
        let socket = crate::admin::control::socket_path(&config.server.state_dir);
        let control = tokio::spawn(crate::admin::control::serve(
            socket,
            delivery.control(),
            shutdown.clone(),
        ));
        (
            refresher,
            tokio::spawn(delivery.run(shutdown.clone())),
            control,
        )
    });
    server.run().await;
    if let Some((refresher, delivery, control)) = delivery {
        // Workers finish the message in hand; every exchange has its own timeout.
        let _ = delivery.await;
        let _ = refresher.await;
        if let Ok(Err(e)) = control.await {
            tracing::error!(error = %e, "control socket failed");
        }
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(alerts) = alerts {
        let _ = alerts.await;
    }
    tracing::info!(queued = intake.spool.len(), "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Keeps every account's token fresh in the background. Without a usable store key the relay
/// still accepts mail, which waits in the queue until the key is fixed.
fn start_token_manager(
    config: &Config,
    shutdown: &CancellationToken,
) -> Option<(Arc<TokenManager>, tokio::task::JoinHandle<()>)> {
    if config.accounts.is_empty() {
        tracing::warn!("no [[account]] is configured: mail is queued but has nowhere to go");
        return None;
    }
    let key = match TokenKey::load(config.tokens.key_file.as_deref()) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(target: "tokens", error = %e, "tokens unavailable: mail is held until this is fixed");
            return None;
        }
    };
    let client = match TokenClient::new() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(target: "tokens", error = %e, "tokens unavailable");
            return None;
        }
    };
    let store = FileStore::new(
        config.server.state_dir.join(&config.tokens.file),
        key,
        config.tokens.backups,
    );
    let manager = Arc::new(TokenManager::new(config, Arc::new(store), client));
    for status in manager.statuses() {
        tracing::info!(target: "tokens", account = %status.account, state = status.health.name(),
            reason = status.health.reason().unwrap_or(""), "account");
    }
    let refresher = tokio::spawn(Arc::clone(&manager).run(shutdown.clone()));
    Some((manager, refresher))
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn stop_on_signal(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    }
}
