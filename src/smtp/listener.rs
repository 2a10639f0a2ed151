//! Accepts connections on every `[[listen]]` socket and runs one [`Session`] per connection.
//!
//! Shutdown (as in mini-redis): the accept loops stop, sessions waiting for a command get
//! `421 4.3.0`, sessions inside DATA finish their message, and `run` returns once every
//! session has ended or `shutdown_timeout` has passed.
//!
//! Reload: a new `Server` takes over the sockets of listeners whose address did not change
//! ([`Server::handoff`]); the old one stops accepting (`Intake::accepting`) and lets its
//! sessions finish with the settings they started with.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::error::SmtpError;
use super::proxy::{self, Header, ProxyError, Version};
use super::reply::Reply;
use super::session::{Intake, Session, handshake_failed};
use super::sessions::Crowded;
use super::tls::Stream;
use crate::config::{ListenConfig, ListenTls};

/// Bound sockets a server hands to the next, keyed by configured address and, since several
/// listeners may ask for port 0 of one address (any free port), their order among those.
pub type Handoff = HashMap<(SocketAddr, usize), std::net::TcpListener>;

pub struct Server {
    intake: Arc<Intake>,
    listeners: Vec<(TcpListener, Arc<ListenConfig>)>,
    /// Duplicates of the bound sockets, for the next server.
    handoff: Handoff,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

impl Server {
    /// Binds every configured listener, taking sockets from `reuse` (a previous server's
    /// handoff) where the address is unchanged; fails on the first that cannot be bound.
    pub async fn bind(intake: Arc<Intake>, reuse: &mut Handoff) -> Result<Server, BindError> {
        let mut listeners = Vec::new();
        let mut handoff = HashMap::new();
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for listen in &intake.config.listen {
            let address = listen.address;
            let nth = seen.entry(address).or_default();
            let key = (address, *nth);
            *nth += 1;
            let error = |source| BindError { address, source };
            let socket = match reuse.remove(&key) {
                Some(socket) => socket,
                None => {
                    let socket = std::net::TcpListener::bind(address).map_err(error)?;
                    socket.set_nonblocking(true).map_err(error)?;
                    socket
                }
            };
            handoff.insert(key, socket.try_clone().map_err(error)?);
            let listener = TcpListener::from_std(socket).map_err(error)?;
            listeners.push((listener, Arc::new(listen.clone())));
        }
        Ok(Server {
            intake,
            listeners,
            handoff,
        })
    }

    /// The sockets, for the server that takes over after a reload.
    pub fn handoff(&mut self) -> Handoff {
        std::mem::take(&mut self.handoff)
    }

    /// The bound addresses, in configuration order (port 0 resolved to the real port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Accepts until `Intake::accepting` is cancelled, then waits for the sessions: without
    /// limit on a reload, up to `shutdown_timeout` once the relay shuts down.
    pub async fn run(self) {
        let Server {
            intake,
            listeners,
            handoff,
        } = self;
        // Duplicates kept past this point would keep the ports open after the accept loops
        // stop; whoever wants them took them with `handoff` before.
        drop(handoff);
        let sessions = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for (listener, listen) in listeners {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, tls = listen.tls.as_str(), auth = listen.auth.as_str(), "listening");
                if listen.speaks_legacy_tls() {
                    tracing::warn!(%address, "tls_profile = \"legacy\" {}", crate::smtp::tls::LEGACY_WEAKENS);
                }
            }
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                listen,
                Arc::clone(&intake),
                sessions.clone(),
            )));
        }
        let housekeeping = {
            let intake = Arc::clone(&intake);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    intake.policy.housekeeping();
                }
            })
        };

        intake.accepting.cancelled().await;
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        housekeeping.abort();
        sessions.close();
        let grace = intake.config.server.shutdown_timeout;
        let deadline = async {
            intake.shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let finished = tokio::select! {
            _ = sessions.wait() => true,
            _ = deadline => false,
        };
        if !finished {
            // Sessions still inside DATA after the grace period have not been answered, so
            // dropping them loses nothing the clients think was accepted.
            tracing::warn!(
                remaining = sessions.len(),
                "shutdown timeout: closing sessions still in progress"
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    listen: Arc<ListenConfig>,
    intake: Arc<Intake>,
    sessions: TaskTracker,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = intake.accepting.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        if listen.proxy_protocol {
            // Only the load balancers may speak first, and who the client is comes from them.
            let balancer = peer.ip().to_canonical();
            if !listen.proxy_from.iter().any(|net| net.contains(&balancer)) {
                let error = SmtpError::NotFromProxy;
                intake.metrics.refused(error.reason());
                tracing::warn!(%peer, reason = error.reason(), "connection refused: not from a proxy_from address");
                sessions.spawn(refuse(socket, error));
                continue;
            }
            let intake = Arc::clone(&intake);
            let listen = Arc::clone(&listen);
            let tracker = sessions.clone();
            sessions.spawn(async move {
                let timeout = intake.config.server.command_timeout;
                let mut socket = socket;
                let header = tokio::time::timeout(timeout, read_proxy_header(&mut socket)).await;
                let client = match header {
                    Ok(Ok(Header::Proxied { source, .. })) => source,
                    Ok(Ok(Header::Local)) => peer,
                    Ok(Err(e)) => {
                        let error = SmtpError::BadProxyHeader;
                        intake.metrics.refused(error.reason());
                        tracing::warn!(%peer, error = %e, reason = error.reason(), "connection refused");
                        refuse(socket, error).await;
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "no PROXY protocol header in time; closed");
                        return;
                    }
                };
                tracing::debug!(balancer = %peer, %client, "PROXY protocol header");
                admit(intake, listen, local, socket, client, &tracker).await;
            });
            continue;
        }
        admit(
            Arc::clone(&intake),
            Arc::clone(&listen),
            local,
            socket,
            peer,
            &sessions,
        )
        .await;
    }
}

/// Admits a connection from `peer` (the client: from a PROXY header behind a balancer)
/// within the connection limits and runs its session, or refuses it.
async fn admit(
    intake: Arc<Intake>,
    listen: Arc<ListenConfig>,
    local: SocketAddr,
    socket: TcpStream,
    peer: std::net::SocketAddr,
    sessions: &TaskTracker,
) {
    let client = peer.ip().to_canonical();
    let server = &intake.config.server;
    let exempt = intake
        .config
        .access
        .connection_limit_exempt
        .iter()
        .any(|net| net.contains(&client));
    let max_per_client = (!exempt).then_some(server.max_connections_per_client);
    let permit = match intake
        .sessions
        .admit(client, server.max_connections, max_per_client)
    {
        Ok(permit) => permit,
        Err(crowded) => {
            let (error, limit) = match crowded {
                Crowded::Total => (SmtpError::TooManyConnections, server.max_connections),
                Crowded::Client => (
                    SmtpError::TooManyConnectionsFromClient,
                    server.max_connections_per_client,
                ),
            };
            intake.metrics.refused(error.reason());
            tracing::warn!(%peer, limit, reason = error.reason(), "connection refused");
            sessions.spawn(refuse(socket, error));
            return;
        }
    };
    sessions.spawn(async move {
        let _permit = permit;
        let stream = match listen.tls {
            ListenTls::Implicit => {
                let Some(acceptors) = intake.tls.clone() else {
                    return;
                };
                let handshake = acceptors.accept(listen.tls_profile, socket);
                match tokio::time::timeout(intake.config.server.command_timeout, handshake).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        handshake_failed(&intake, &listen, local, peer, &e);
                        return;
                    }
                    Err(_) => return,
                }
            }
            ListenTls::None | ListenTls::StartTls => Stream::Plain(socket),
        };
        Session::new(intake, listen, local, peer, stream)
            .run()
            .await;
    });
}

/// Reads exactly the PROXY protocol header (v1 or v2) at the start of the connection, so the
/// session's bytes stay in the socket.
async fn read_proxy_header(socket: &mut TcpStream) -> Result<Header, ProxyError> {
    use tokio::io::AsyncReadExt;
    let lost = |_| ProxyError::Missing;
    let mut start = [0u8; 5];
    socket.read_exact(&mut start).await.map_err(lost)?;
    match proxy::version(&start)? {
        Version::V1 => {
            // One line, at most 107 bytes: read a byte at a time so nothing past it is taken.
            let mut line = start.to_vec();
            while !line.ends_with(b"\r\n") {
                if line.len() >= proxy::V1_MAX {
                    return Err(ProxyError::V1("longer than 107 bytes"));
                }
                line.push(socket.read_u8().await.map_err(lost)?);
            }
            proxy::parse_v1(&line)
        }
        Version::V2 => {
            let mut prefix = [0u8; 16];
            prefix[..5].copy_from_slice(&start);
            socket.read_exact(&mut prefix[5..]).await.map_err(lost)?;
            let mut body = vec![0u8; proxy::v2_body_len(&prefix)?];
            socket.read_exact(&mut body).await.map_err(lost)?;
            proxy::parse_v2(&prefix, &body)
        }
    }
}

/// Answers with the refusal and closes. The close lingers: what the client already sent is
/// read and dropped for a moment, since closing with unread input resets the connection and
/// the client could lose the reply.
async fn refuse(mut socket: TcpStream, error: SmtpError) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    Reply::from(&error).write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        socket.write_all(&out).await?;
        socket.shutdown().await?;
        let mut sink = [0u8; 1024];
        while socket.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}
