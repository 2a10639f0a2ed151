//! The admin HTTP endpoint on `[admin].listen` (loopback by default): the status page at
//! `GET /` (and its report as `/status.json` and `/status.txt`), `GET /health` (JSON, 503
//! when mail cannot flow), `GET /ready`, and `GET /metrics` (Prometheus text format);
//! over HTTPS only with `[admin] tls = true` (`https.rs`).

pub mod actions;
pub mod alerts;
pub mod audit;
pub mod control;
pub mod https;
pub mod page;
pub mod sign_in;
pub mod status;
pub mod test_message;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::oauth::manager::{AccountStatus, Health, TokenManager};
use crate::queue::Spool;

/// Mail older than this in the queue makes the relay "degraded".
const OLD_MAIL: Duration = Duration::from_secs(3600);

pub struct Admin {
    /// Requests must carry `Authorization: Bearer <this>` when set.
    pub bearer_token: Option<crate::oauth::Secret>,
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    /// `None` when the token store key is missing: no account can send.
    pub tokens: Option<Arc<TokenManager>>,
    pub metrics: Arc<Metrics>,
    /// What delivery waits for (spent budgets, pauses).
    pub delivery: Arc<crate::delivery::DeliveryStatus>,
    /// The sending budgets, read for the status page.
    pub budget: Arc<dyn crate::delivery::Budget>,
    /// With `[cluster]`: Redis's health and the nodes.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `[admin.sign_in]`: the page needs a signed-in session instead of the bearer token.
    pub sign_in: Option<Arc<sign_in::flow::SignIn>>,
    /// What operators did: the process's, so a reload forgets nothing.
    pub recent: Arc<audit::Recent>,
}

pub fn router(admin: Arc<Admin>) -> Router {
    let page = Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/status.txt", get(status_text));
    let bearer = || axum::middleware::from_fn_with_state(Arc::clone(&admin), authorize);
    let router = if admin.sign_in.is_some() {
        // The page for signed-in people; /metrics keeps its bearer rule; /health, like
        // /ready, stays open for probes.
        page.route("/action", axum::routing::post(actions::act))
            .route("/select", axum::routing::post(actions::act_on_selection))
            .route("/token", axum::routing::post(actions::refresh_token))
            .route(
                "/test-message",
                axum::routing::post(actions::send_test_message),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&admin),
                signed_in,
            ))
            .merge(
                Router::new()
                    .route("/metrics", get(metrics))
                    .layer(bearer()),
            )
            .route("/health", get(health))
            .route("/signin", get(sign_in_start))
            .route("/signin/callback", get(sign_in_callback))
            .route("/signout", get(sign_out))
    } else {
        page.route("/health", get(health))
            .route("/metrics", get(metrics))
            .layer(bearer())
    };
    // Says only that the endpoint serves: a readiness probe (Kubernetes' httpGet) can
    // send no token.
    router.route("/ready", get(ready)).with_state(admin)
}

/// With `[admin.sign_in]`: a live session, or off to sign in (again).
async fn signed_in(
    State(admin): State<Arc<Admin>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let sign_in = admin.sign_in.as_ref().expect("routed only with sign_in");
    match sign_in::flow::session_id(request.headers()).and_then(|id| sign_in.session(&id)) {
        Some(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None => axum::response::Redirect::to("/signin").into_response(),
    }
}

async fn sign_in_start(State(admin): State<Arc<Admin>>) -> axum::response::Response {
    let sign_in = admin.sign_in.as_ref().expect("routed only with sign_in");
    match sign_in.start().await {
        Ok(url) => axum::response::Redirect::to(&url).into_response(),
        Err(e @ sign_in::flow::SignInError::Busy(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin sign-in cannot start");
            (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn sign_in_callback(
    State(admin): State<Arc<Admin>>,
    axum::extract::Query(callback): axum::extract::Query<Callback>,
) -> axum::response::Response {
    let sign_in = admin.sign_in.as_ref().expect("routed only with sign_in");
    let (Some(code), Some(state)) = (callback.code, callback.state) else {
        let why = callback
            .error_description
            .or(callback.error)
            .unwrap_or_else(|| "no code".into());
        tracing::warn!(error = %crate::logging::Untrusted(&why), "admin sign-in refused by the issuer");
        return (StatusCode::BAD_REQUEST, "the sign-in did not complete\n").into_response();
    };
    match sign_in.finish(&code, &state).await {
        // Always to the page itself: nothing in the request chooses where the browser goes.
        Ok((Some((id, session)), _)) => {
            tracing::info!(user = %crate::logging::Untrusted(session.user()), role = ?session.role, "admin signed in");
            (
                [(header::SET_COOKIE, sign_in::flow::SignIn::cookie(&id))],
                axum::response::Redirect::to("/"),
            )
                .into_response()
        }
        Ok((None, claims)) => {
            tracing::warn!(user = %crate::logging::Untrusted(claims.user()), "admin sign-in: neither viewer nor operator");
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "{} may not see this relay: ask for the viewer or operator role\n",
                    claims.user()
                ),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin sign-in refused");
            (
                StatusCode::FORBIDDEN,
                "the sign-in was refused; start again at /signin\n",
            )
                .into_response()
        }
    }
}

async fn sign_out(
    State(admin): State<Arc<Admin>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let sign_in = admin.sign_in.as_ref().expect("routed only with sign_in");
    if let Some(session) = sign_in::flow::session_id(&headers).and_then(|id| sign_in.sign_out(&id))
    {
        tracing::info!(user = %crate::logging::Untrusted(session.user()), "admin signed out");
    }
    (
        [
            (header::SET_COOKIE, sign_in::flow::SignIn::expired_cookie()),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".into()),
        ],
        "signed out\n",
    )
        .into_response()
}

/// Reads the bearer token from `[admin] bearer_token_file`, if one is configured.
pub fn bearer_token(config: &Config) -> std::io::Result<Option<crate::oauth::Secret>> {
    config
        .admin
        .bearer_token_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|t| crate::oauth::Secret::new(t.trim()))
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })
        .transpose()
}

async fn authorize(
    State(admin): State<Arc<Admin>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(expected) = &admin.bearer_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Digests are compared, not the tokens: how long a comparison takes then says
        // nothing about how much of a guess was right.
        let digest = |t: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, t)
                .as_ref()
                .to_vec()
        };
        let matches =
            presented.is_some_and(|p| digest(p.as_bytes()) == digest(expected.expose().as_bytes()));
        if !matches {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Serves until `shutdown`: over HTTPS only when `tls` is given (`[admin] tls`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) {
    let stopped = shutdown.clone();
    let stopped = async move { stopped.cancelled().await };
    let result = match tls {
        None => {
            axum::serve(listener, router(admin))
                .with_graceful_shutdown(stopped)
                .await
        }
        Some(acceptor) => match https::TlsListener::new(listener, acceptor, shutdown) {
            Ok(listener) => {
                let app = router(admin).layer(axum::middleware::from_fn(https::hsts));
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP stopped");
    }
}

#[derive(Serialize)]
pub struct HealthReport {
    pub status: Status,
    /// Why it is not healthy, the worst first.
    pub reasons: Vec<String>,
    pub accounts: Vec<AccountStatus>,
    /// Accounts whose deliveries defer, none delivered since.
    deferring: Vec<crate::metrics::activity::Deferring>,
    /// Mailboxes whose mail waits for a budget or a pause, and until when.
    pub held_mailboxes: Vec<crate::delivery::HeldMailbox>,
    /// SMTP accounts sending through Microsoft Graph (`fallback_transport`).
    pub graph_fallbacks: Vec<crate::delivery::FallbackInUse>,
    pub queue: QueueReport,
    pub last_delivery: Option<metrics::LastDelivery>,
    /// With `[cluster]`: Redis's health, how budgets are counted, the live nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterReport>,
}

#[derive(Serialize)]
pub struct QueueReport {
    pub depth: usize,
    pub oldest_age_seconds: Option<u64>,
}

fn queue_report(spool: &Spool) -> QueueReport {
    let now_ms = crate::clock::unix_ms();
    QueueReport {
        depth: spool.len(),
        oldest_age_seconds: spool
            .oldest_received_at()
            .map(|at| now_ms.saturating_sub(at) / 1000),
    }
}

fn statuses(admin: &Admin) -> Vec<AccountStatus> {
    admin
        .tokens
        .as_ref()
        .map(|t| t.statuses())
        .unwrap_or_default()
}

async fn health(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let report = assess(&admin).await;
    let code = match report.status {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        Status::Degraded | Status::Healthy => StatusCode::OK,
    };
    (code, axum::Json(report))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Healthy,
    /// Mail flows, or will, but something needs a look.
    Degraded,
    /// Mail cannot flow until an admin acts.
    Unhealthy,
}

impl Status {
    /// As `/health` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }

    pub fn from_name(name: &str) -> Option<Status> {
        [Status::Healthy, Status::Degraded, Status::Unhealthy]
            .into_iter()
            .find(|status| status.name() == name)
    }
}

/// The header `/status.txt` carries the verdict in, so `smtprelay status` can exit with the
/// verdict of the very report it prints.
pub const STATUS_HEADER: &str = "smtprelay-status";

/// How the relay is doing, as `/health` answers and the status page heads with. Only facts
/// that hold until something changes count: the same state gives the same answer poll after
/// poll.
pub async fn assess(admin: &Admin) -> HealthReport {
    let accounts = statuses(admin);
    let queue = queue_report(&admin.spool);
    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();
    if admin.config.accounts.is_empty() {
        unhealthy.push(
            "no [[account]] is configured: mail is accepted and queued but has nowhere to go"
                .to_owned(),
        );
    } else if admin.tokens.is_none() {
        unhealthy.push(
            "tokens unavailable: no token store key (run `smtprelay token keygen`)".to_owned(),
        );
    }
    for account in &accounts {
        match &account.health {
            Health::NeedsLogin(reason) | Health::Misconfigured(reason) => unhealthy.push(format!(
                "account {}: {} ({reason})",
                account.account,
                account.health.name()
            )),
            Health::Failing(reason) if !account.usable_token => unhealthy.push(format!(
                "account {}: no usable token and token requests fail ({} in a row: {reason})",
                account.account, account.consecutive_failures
            )),
            Health::Failing(reason) => degraded.push(format!(
                "account {}: token requests fail ({} in a row: {reason}); the current token lasts {} more seconds",
                account.account,
                account.consecutive_failures,
                account.access_token_expires_in_secs.unwrap_or(0)
            )),
            Health::NoToken if account.flow != crate::config::Flow::ClientCredentials => unhealthy
                .push(format!(
                    "account {}: no token yet; run `smtprelay token login --account {}`",
                    account.account, account.account
                )),
            _ => {}
        }
    }
    if let Err(e) = admin.spool.probe_writable().await {
        degraded.push(format!(
            "the spool cannot be written ({e}): new mail is refused with 451"
        ));
    }
    let deferring = admin.metrics.activity.deferring();
    degraded.extend(deferring.iter().map(|d| d.describe()));
    let held_mailboxes = admin.delivery.held();
    degraded.extend(held_mailboxes.iter().map(|held| held.describe()));
    // Mail flows, but not the way the admin set up: worth knowing, and fixing.
    let graph_fallbacks = admin.delivery.fallbacks();
    degraded.extend(graph_fallbacks.iter().map(|f| f.describe()));
    // Mail is refused, though what is queued flows: a look is needed before devices give up.
    let admission =
        crate::queue::admission::Admission::new(&admin.config, &admin.spool, &*admin.delivery);
    degraded.extend(admission.reached().iter().map(|limit| limit.describe()));
    let cluster = admin.cluster.as_ref().map(|c| c.report());
    degraded.extend(cluster.as_ref().and_then(|c| c.problem()));
    if let Some(age) = queue.oldest_age_seconds
        && age > OLD_MAIL.as_secs()
    {
        degraded.push(format!(
            "the oldest queued message is {} minutes old",
            age / 60
        ));
    }
    let status = if !unhealthy.is_empty() {
        Status::Unhealthy
    } else if !degraded.is_empty() {
        Status::Degraded
    } else {
        Status::Healthy
    };
    unhealthy.extend(degraded);
    HealthReport {
        status,
        reasons: unhealthy,
        accounts,
        deferring,
        held_mailboxes,
        graph_fallbacks,
        queue,
        last_delivery: admin.metrics.last_delivery(),
        cluster,
    }
}

async fn status_report(admin: &Admin) -> status::StatusReport {
    let health = assess(admin).await;
    status::report(admin, health).await
}

#[derive(serde::Deserialize)]
struct PageQuery {
    #[serde(default)]
    page: usize,
}

async fn status_page(
    State(admin): State<Arc<Admin>>,
    session: Option<axum::Extension<sign_in::sessions::Session>>,
    axum::extract::Query(query): axum::extract::Query<PageQuery>,
) -> impl IntoResponse {
    let report = status_report(&admin).await;
    let mut html = page::render_page(&report, session.is_none());
    if let Some(axum::Extension(session)) = session {
        let who = format!(
            "<p class=\"muted\" id=\"signed-in\">Signed in as {} ({}, {}) · <a href=\"/signout\">Sign out</a></p>",
            page::escape(session.name().unwrap_or(session.user())),
            page::escape(session.user()),
            match session.role {
                sign_in::Role::Operator => "operator",
                sign_in::Role::Viewer => "viewer",
            }
        );
        html = html.replacen("<body>", &format!("<body>{who}"), 1);
        let sections = actions::sections(&admin, &session, query.page).await;
        html = html.replacen("</body>", &format!("{sections}</body>"), 1);
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing may come from elsewhere; inline style and script are the page's own.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
}

async fn status_json(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    axum::Json(status_report(&admin).await)
}

async fn status_text(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let report = status_report(&admin).await;
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (
                header::HeaderName::from_static(STATUS_HEADER),
                report.status.name(),
            ),
        ],
        status::text(&report),
    )
}

async fn ready() -> &'static str {
    "ready\n"
}

fn cluster_metrics(out: &mut String, report: &crate::cluster::ClusterReport) {
    use crate::metrics::{counter, gauge};
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    gauge(
        out,
        "smtprelay_cluster_redis_up",
        "whether Redis answers this node",
        flag(report.reachable),
    );
    gauge(
        out,
        "smtprelay_cluster_budgets_shared",
        "1 while budgets are counted in Redis for all nodes; 0 on this node's share or paused",
        flag(report.mode == crate::cluster::Mode::Shared),
    );
    gauge(
        out,
        "smtprelay_cluster_nodes",
        "nodes whose heartbeat Redis has seen within 5 s",
        report.nodes.len() as f64,
    );
    counter(
        out,
        "smtprelay_cluster_redis_calls_total",
        "round trips to Redis (scripts and releases)",
        report.redis_calls,
    );
    counter(
        out,
        "smtprelay_cluster_redis_failures_total",
        "Redis calls that failed or went unanswered",
        report.redis_failures,
    );
}

/// Each account's backlog and its cap (admission control refuses its mail at the cap; the
/// refusals count in `smtprelay_refusals_total{reason="account_backlog"}`).
fn backlog_metrics(out: &mut String, admin: &Admin) {
    use crate::metrics::escape;
    use std::fmt::Write;
    let name = "smtprelay_account_backlog";
    let _ = writeln!(
        out,
        "# HELP {name} messages queued for the account\n# TYPE {name} gauge"
    );
    for backlog in admin.delivery.backlogs() {
        let _ = writeln!(
            out,
            "{name}{{account=\"{}\"}} {}",
            escape(&backlog.account),
            backlog.queued
        );
    }
    let name = "smtprelay_account_max_backlog";
    let _ = writeln!(
        out,
        "# HELP {name} the account's max_backlog\n# TYPE {name} gauge"
    );
    for account in &admin.config.accounts {
        let _ = writeln!(
            out,
            "{name}{{account=\"{}\"}} {}",
            escape(&account.name),
            account.max_backlog
        );
    }
}

/// A per-account metric read from the token manager's status: name, type, help, value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&AccountStatus) -> Option<f64>,
);

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    use crate::metrics::{escape, gauge};
    let mut out = String::new();
    admin.metrics.render(&mut out);
    let queue = queue_report(&admin.spool);
    gauge(
        &mut out,
        "smtprelay_queue_depth",
        "messages in the queue",
        queue.depth as f64,
    );
    gauge(
        &mut out,
        "smtprelay_queue_oldest_age_seconds",
        "age of the oldest queued message",
        queue.oldest_age_seconds.unwrap_or(0) as f64,
    );
    backlog_metrics(&mut out, &admin);
    if let Some(cluster) = &admin.cluster {
        cluster_metrics(&mut out, &cluster.report());
    }
    let accounts = statuses(&admin);
    let families: [Family; 6] = [
        (
            "smtprelay_token_expires_in_seconds",
            "gauge",
            "seconds until the access token expires",
            |s| s.access_token_expires_in_secs.map(|v| v as f64),
        ),
        (
            "smtprelay_token_refreshes_total",
            "counter",
            "token requests that succeeded",
            |s| Some(s.refreshes_total as f64),
        ),
        (
            "smtprelay_token_refresh_failures_total",
            "counter",
            "token requests that failed",
            |s| Some(s.refresh_failures_total as f64),
        ),
        (
            "smtprelay_token_consecutive_failures",
            "gauge",
            "token request failures since the last success",
            |s| Some(s.consecutive_failures as f64),
        ),
        (
            "smtprelay_token_usable",
            "gauge",
            "1 when the account can get tokens (valid, refreshing or not yet asked)",
            |s| {
                Some(matches!(
                    s.health,
                    Health::Valid | Health::Refreshing | Health::NoToken
                ) as u8 as f64)
            },
        ),
        (
            "smtprelay_token_unsaved",
            "gauge",
            "1 while the account's newest token is only in memory (the store did not answer)",
            |s| Some(s.unsaved as u8 as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
        );
        for status in &accounts {
            if let Some(v) = value(status) {
                let _ = std::fmt::Write::write_fmt(
                    &mut out,
                    format_args!("{name}{{account=\"{}\"}} {v}\n", escape(&status.account)),
                );
            }
        }
    }
    // Only while a node is asking: the series is there for as long as the lock is held.
    let name = "smtprelay_token_refresh_lock_held";
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "# HELP {name} 1 while a node (of a cluster) asks Entra for the account's token\n# TYPE {name} gauge\n"
        ),
    );
    for status in &accounts {
        if let Some(node) = &status.refresh_lock_holder {
            let _ = std::fmt::Write::write_fmt(
                &mut out,
                format_args!(
                    "{name}{{account=\"{}\",node=\"{}\"}} 1\n",
                    escape(&status.account),
                    escape(node)
                ),
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
