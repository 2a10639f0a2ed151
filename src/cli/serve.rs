//! `smtprelay serve`: start-up, signal handling and graceful shutdown.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
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
    let intake = Arc::new(Intake {
        policy: Policy::new(&config),
        config: Arc::new(config),
        spool,
        tls,
        shutdown: shutdown.clone(),
    });
    let server = Server::bind(Arc::clone(&intake))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(stop_on_signal(shutdown));
    server.run().await;
    tracing::info!(queued = intake.spool.len(), "stopped");
    Ok(ExitCode::SUCCESS)
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
