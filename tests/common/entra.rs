//! A test double of the Microsoft identity platform (Entra ID) v2.0 endpoints, strict where
//! Entra is strict: form bodies, JSON errors with AADSTS codes and `error_codes`, client
//! secrets and certificate assertions (signature checked with the certificate's public key,
//! `aud`, `iss`, `sub`, times), one resource per request, device code polling states, PKCE,
//! and refresh-token rotation that refuses a refresh token used twice.
#![allow(dead_code)]
// Handlers return ready HTTP responses as errors; their size does not matter in a test double.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Value, json};

pub const TENANT: &str = "contoso.onmicrosoft.com";
pub const TENANT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const APP_ONLY_SCOPE: &str = "https://outlook.office365.com/.default";
pub const DELEGATED_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
/// The audience of Microsoft Graph tokens.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

#[derive(Clone, Default)]
pub struct App {
    pub client_id: String,
    pub secret: Option<String>,
    /// DER of the uploaded certificate.
    pub certificate: Option<Vec<u8>>,
    /// "Allow public client flows" (device code without a secret).
    pub public_client: bool,
    /// The user that signs in for delegated flows.
    pub user: String,
    /// Microsoft Graph's Mail.Send was not granted (tokens for Graph carry no such role).
    pub graph_mail_send_denied: bool,
    /// Tokens carry no `roles`/`scp` claims (as a non-Microsoft provider may issue them);
    /// the resource still knows what they allow.
    pub permissions_unclaimed: bool,
}

/// A scripted failure for the next token request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// HTTP status with an HTML body (as a proxy or a broken gateway sends).
    Status(u16),
    /// 429 with Retry-After seconds.
    Throttle(u64),
    /// A JSON error with this status, OAuth error and AADSTS code.
    Error(u16, &'static str, u64),
    /// Close the connection without an answer.
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub client_id: String,
    pub audience: String,
    pub user: Option<String>,
    pub expires_at: u64,
    /// `roles` (app-only) or `scp` (delegated), as the resource checks them.
    pub permissions: Vec<String>,
}

struct RefreshToken {
    client_id: String,
    scope: String,
    user: String,
    used: bool,
    revoked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceStatus {
    Pending,
    Approved,
    Declined,
}

struct DeviceCode {
    client_id: String,
    scope: String,
    user_code: String,
    status: DeviceStatus,
    expires: SystemTime,
    last_poll: Option<std::time::Instant>,
    interval: Duration,
}

struct AuthCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
}

#[derive(Default)]
pub struct EntraState {
    pub apps: HashMap<String, App>,
    pub access_token_lifetime: u64,
    refresh_tokens: HashMap<String, RefreshToken>,
    device_codes: HashMap<String, DeviceCode>,
    auth_codes: HashMap<String, AuthCode>,
    pub issued: HashMap<String, IssuedToken>,
    pub faults: VecDeque<Fault>,
    /// Grant types of token requests, in order.
    pub requests: Vec<String>,
    /// When each of `requests` came.
    pub requested_at: Vec<std::time::Instant>,
    /// Delay before answering a token request (widens race windows in tests).
    pub delay: Option<Duration>,
    pub device_interval: u64,
    pub device_expires_in: u64,
}

#[derive(Clone)]
pub struct Entra {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<EntraState>>,
}

impl Entra {
    pub async fn start() -> Entra {
        let state = Arc::new(Mutex::new(EntraState {
            access_token_lifetime: 3599,
            device_interval: 1,
            device_expires_in: 900,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Entra { addr, state }
    }

    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/token", self.authority())
    }

    pub fn register(&self, app: App) {
        self.state().apps.insert(app.client_id.clone(), app);
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, EntraState> {
        self.state.lock().unwrap()
    }

    pub fn fault(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// When the requests of `grant_type` came.
    pub fn request_times(&self, grant_type: &str) -> Vec<std::time::Instant> {
        let state = self.state();
        state
            .requests
            .iter()
            .zip(&state.requested_at)
            .filter(|(g, _)| *g == grant_type)
            .map(|(_, at)| *at)
            .collect()
    }

    pub fn requests(&self, grant_type: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|g| *g == grant_type)
            .count()
    }

    /// Signs in at the device login page: approves (or declines) the code.
    pub fn device_login(&self, user_code: &str, status: DeviceStatus) {
        for code in self.state().device_codes.values_mut() {
            if code.user_code == user_code {
                code.status = status;
            }
        }
    }

    /// Revokes every refresh token (password reset, admin revocation).
    pub fn revoke_refresh_tokens(&self) {
        for token in self.state().refresh_tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// Every secret this server handed out: access and refresh tokens, device codes.
    pub fn secrets(&self) -> Vec<String> {
        let state = self.state();
        state
            .issued
            .keys()
            .chain(state.refresh_tokens.keys())
            .chain(state.device_codes.keys())
            .cloned()
            .collect()
    }

    /// Whether `token` is a current access token for `audience` (as Exchange checks).
    pub fn validate(&self, token: &str) -> Option<IssuedToken> {
        let state = self.state();
        let issued = state.issued.get(token)?;
        (issued.expires_at > unix_now()).then(|| issued.clone())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Entra's error body: `error`, a description that starts with the AADSTS code, and
/// `error_codes`.
fn error(status: u16, error: &str, code: u64, message: &str) -> Response {
    let trace = random(8);
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {trace} Timestamp: 2026-11-27 00:00:00Z"),
        "error_codes": [code],
        "timestamp": "2026-11-27 00:00:00Z",
        "trace_id": trace,
        "correlation_id": trace,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// RFC 8628 polling errors carry no AADSTS-style code in the `error` field's sense, but
/// Entra still sends `error_codes`.
fn device_error(error_name: &str, code: u64) -> Response {
    error(400, error_name, code, &format!("{error_name}."))
}

async fn apply_fault(state: &Arc<Mutex<EntraState>>) -> Option<Response> {
    let (fault, delay) = {
        let mut s = state.lock().unwrap();
        (s.faults.pop_front(), s.delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match fault? {
        Fault::Status(status) => Some(
            (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Service Unavailable</body></html>",
            )
                .into_response(),
        ),
        Fault::Throttle(seconds) => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, seconds.to_string())],
                axum::Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS90006: throttled."})),
            )
                .into_response(),
        ),
        Fault::Error(status, name, code) => Some(error(status, name, code, "Scripted failure.")),
        Fault::Hang(duration) => {
            tokio::time::sleep(duration).await;
            Some(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
    }
}

/// Checks how the client authenticated; returns the app.
fn authenticate_client(
    state: &EntraState,
    form: &HashMap<String, String>,
    endpoint: &str,
    confidential_required: bool,
) -> Result<App, Response> {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(app) = state.apps.get(&client_id).cloned() else {
        return Err(error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{TENANT}'."
            ),
        ));
    };
    let secret = form.get("client_secret");
    let assertion = form.get("client_assertion");
    if let Some(secret) = secret {
        if app.public_client && app.secret.is_none() {
            return Err(error(
                400,
                "invalid_request",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            ));
        }
        if app.secret.as_ref() != Some(secret) {
            return Err(error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            ));
        }
        return Ok(app);
    }
    if let Some(assertion) = assertion {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(error(
                400,
                "invalid_request",
                90014,
                "The required field 'client_assertion_type' is missing or wrong.",
            ));
        }
        check_assertion(&app, assertion, endpoint)?;
        return Ok(app);
    }
    if confidential_required || !app.public_client {
        return Err(error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(app)
}

/// Checks a client assertion as Entra does (also the OpenID Connect double's).
pub fn check_assertion(app: &App, assertion: &str, endpoint: &str) -> Result<(), Response> {
    let bad = |message: &str| error(401, "invalid_client", 700027, message);
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err(bad("Client assertion is not a JWS."));
    }
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| bad("Bad base64url."));
    let header: Value =
        serde_json::from_slice(&decode(parts[0])?).map_err(|_| bad("Bad header."))?;
    let claims: Value =
        serde_json::from_slice(&decode(parts[1])?).map_err(|_| bad("Bad claims."))?;
    let signature = decode(parts[2])?;
    let Some(cert) = &app.certificate else {
        return Err(bad("No certificate is registered for the application."));
    };
    let (algorithm, thumbprint): (&'static dyn ring::signature::VerificationAlgorithm, Vec<u8>) =
        match header["alg"].as_str() {
            Some("PS256") => (
                &ring::signature::RSA_PSS_2048_8192_SHA256,
                ring::digest::digest(&ring::digest::SHA256, cert)
                    .as_ref()
                    .to_vec(),
            ),
            Some("RS256") => (
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert)
                    .as_ref()
                    .to_vec(),
            ),
            _ => return Err(bad("Unsupported signing algorithm.")),
        };
    let key_id = match header["alg"].as_str() {
        Some("PS256") => header["x5t#S256"].as_str(),
        _ => header["x5t"].as_str(),
    };
    if key_id.map(|k| URL_SAFE_NO_PAD.decode(k).ok()) != Some(Some(thumbprint)) {
        return Err(error(
            401,
            "invalid_client",
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        ));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    let public_key = parsed.public_key().subject_public_key.data.to_vec();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    ring::signature::UnparsedPublicKey::new(algorithm, public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| bad("Client assertion contains an invalid signature."))?;
    let now = unix_now();
    if claims["aud"].as_str() != Some(endpoint) {
        return Err(error(
            400,
            "invalid_client",
            700212,
            "No matching federated identity record found for presented assertion audience.",
        ));
    }
    if claims["iss"].as_str() != Some(&app.client_id)
        || claims["sub"].as_str() != Some(&app.client_id)
    {
        return Err(error(
            401,
            "invalid_client",
            700023,
            "Client assertion audience claim does not match Realm issuer.",
        ));
    }
    let exp = claims["exp"].as_u64().unwrap_or(0);
    let nbf = claims["nbf"].as_u64().unwrap_or(u64::MAX);
    if exp <= now || nbf > now + 300 || exp > now + 86400 || claims["jti"].as_str().is_none() {
        return Err(error(
            400,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

/// Only one resource per request (AADSTS700022 / 70011).
fn resource_of(scope: &str) -> Result<String, Response> {
    let mut resources: Vec<&str> = scope
        .split(' ')
        .filter(|s| {
            !s.is_empty() && !matches!(*s, "offline_access" | "openid" | "profile" | "email")
        })
        .map(|s| s.rsplit_once('/').map_or(s, |(r, _)| r))
        .collect();
    resources.dedup();
    match resources.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        )),
        _ => Err(error(
            400,
            "invalid_scope",
            700022,
            "The provided value for the input parameter scope is not valid because it contains more than one resource.",
        )),
    }
}

fn issue(state: &mut EntraState, app: &App, scope: &str, delegated: bool) -> Response {
    let resource = match resource_of(scope) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let lifetime = state.access_token_lifetime;
    let exp = unix_now() + lifetime;
    let mut claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
        "tid": TENANT_ID,
        "appid": app.client_id,
        "oid": "99999999-0000-0000-0000-000000000001",
        "exp": exp,
        "iat": unix_now(),
    });
    let graph = resource == GRAPH_RESOURCE;
    let permissions: Vec<String> = match (graph, delegated) {
        (true, _) if app.graph_mail_send_denied => vec![],
        (true, _) => vec!["Mail.Send".into(), "Mail.ReadWrite".into()],
        (false, true) => vec!["SMTP.Send".into()],
        (false, false) => vec!["SMTP.SendAsApp".into()],
    };
    if delegated {
        claims["upn"] = json!(app.user);
    }
    if app.permissions_unclaimed {
    } else if delegated {
        claims["scp"] = json!(permissions.join(" "));
    } else {
        claims["roles"] = json!(permissions);
    }
    let access_token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        random(32)
    );
    state.issued.insert(
        access_token.clone(),
        IssuedToken {
            client_id: app.client_id.clone(),
            audience: resource,
            user: delegated.then(|| app.user.clone()),
            expires_at: exp,
            permissions,
        },
    );
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope.replace(" offline_access", ""),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if delegated && scope.split(' ').any(|s| s == "offline_access") {
        let refresh = format!("1.AQ{}", random(48));
        state.refresh_tokens.insert(
            refresh.clone(),
            RefreshToken {
                client_id: app.client_id.clone(),
                scope: scope.to_owned(),
                user: app.user.clone(),
                used: false,
                revoked: false,
            },
        );
        body["refresh_token"] = json!(refresh);
    }
    axum::Json(body).into_response()
}

async fn token(
    State(state): State<Arc<Mutex<EntraState>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    }
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    {
        let mut s = state.lock().unwrap();
        s.requests.push(grant_type.clone());
        s.requested_at.push(std::time::Instant::now());
    }
    if let Some(response) = apply_fault(&state).await {
        return response;
    }
    if tenant != TENANT && tenant != TENANT_ID {
        return error(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let mut s = state.lock().unwrap();
    let endpoint = format!(
        "http://{}/{tenant}/oauth2/v2.0/token",
        headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    );
    let scope = form.get("scope").cloned().unwrap_or_default();
    let known_grant = matches!(
        grant_type.as_str(),
        "client_credentials"
            | "refresh_token"
            | "authorization_code"
            | "urn:ietf:params:oauth:grant-type:device_code"
    );
    if !known_grant {
        return error(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    // Only client credentials demand a confidential client.
    let app = match authenticate_client(&s, &form, &endpoint, grant_type == "client_credentials") {
        Ok(app) => app,
        Err(response) => return response,
    };
    match grant_type.as_str() {
        "client_credentials" => {
            if !scope.ends_with("/.default") || scope.contains(' ') {
                return error(
                    400,
                    "invalid_scope",
                    1002012,
                    "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
                );
            }
            issue(&mut s, &app, &scope, false)
        }
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(record) = s.refresh_tokens.get_mut(&presented) else {
                return error(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            };
            if record.client_id != app.client_id {
                return error(
                    400,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed.",
                );
            }
            if record.revoked {
                return error(
                    400,
                    "invalid_grant",
                    50173,
                    "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
                );
            }
            if record.used {
                return error(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity or has been used already.",
                );
            }
            record.used = true;
            let _ = (&record.scope, &record.user);
            issue(&mut s, &app, &scope, true)
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = form.get("device_code").cloned().unwrap_or_default();
            let Some(device) = s.device_codes.get_mut(&code) else {
                return device_error("bad_verification_code", 70019);
            };
            if device.client_id != app.client_id {
                return device_error("bad_verification_code", 70019);
            }
            if SystemTime::now() > device.expires {
                return device_error("expired_token", 70020);
            }
            let now = std::time::Instant::now();
            let too_fast = device.last_poll.is_some_and(|last| {
                now.duration_since(last) + Duration::from_millis(200) < device.interval
            });
            device.last_poll = Some(now);
            if too_fast {
                device.interval += Duration::from_secs(5);
                return device_error("slow_down", 70016);
            }
            match device.status {
                DeviceStatus::Pending => device_error("authorization_pending", 70016),
                DeviceStatus::Declined => device_error("authorization_declined", 70017),
                DeviceStatus::Approved => {
                    let scope = device.scope.clone();
                    s.device_codes.remove(&code);
                    issue(&mut s, &app, &scope, true)
                }
            }
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(grant) = s.auth_codes.remove(&code) else {
                return error(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                );
            };
            if grant.client_id != app.client_id
                || form.get("redirect_uri") != Some(&grant.redirect_uri)
            {
                return error(
                    400,
                    "invalid_grant",
                    50148,
                    "The code_verifier does not match the code_challenge supplied in the authorization request.",
                );
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                &ring::digest::SHA256,
                verifier.as_bytes(),
            ));
            if challenge != grant.challenge {
                return error(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                );
            }
            issue(&mut s, &app, &grant.scope, true)
        }
        _ => unreachable!("checked above"),
    }
}

async fn devicecode(
    State(state): State<Arc<Mutex<EntraState>>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if tenant != TENANT && tenant != TENANT_ID {
        return error(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let mut s = state.lock().unwrap();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(app) = s.apps.get(&client_id).cloned() else {
        return error(
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    };
    if !app.public_client {
        return error(
            400,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    if let Err(response) = resource_of(&scope) {
        return response;
    }
    let device_code = random(32);
    let user_code = format!("{:08}", rand::random::<u32>() % 100_000_000);
    let expires_in = s.device_expires_in;
    let interval = s.device_interval;
    s.device_codes.insert(
        device_code.clone(),
        DeviceCode {
            client_id,
            scope,
            user_code: user_code.clone(),
            status: DeviceStatus::Pending,
            expires: SystemTime::now() + Duration::from_secs(expires_in),
            last_poll: None,
            interval: Duration::from_secs(interval),
        },
    );
    axum::Json(json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": "https://microsoft.com/devicelogin",
        "expires_in": expires_in,
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {user_code} to authenticate."),
    }))
    .into_response()
}

/// The browser's visit: signs the user in at once and redirects with a code.
async fn authorize(
    State(state): State<Arc<Mutex<EntraState>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    let client_id = query.get("client_id").cloned().unwrap_or_default();
    if !s.apps.contains_key(&client_id) {
        return (
            StatusCode::BAD_REQUEST,
            "AADSTS700016: application not found",
        )
            .into_response();
    }
    let (Some(redirect_uri), Some(challenge)) =
        (query.get("redirect_uri"), query.get("code_challenge"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "AADSTS900144: missing redirect_uri or code_challenge",
        )
            .into_response();
    };
    if query.get("code_challenge_method").map(String::as_str) != Some("S256")
        || query.get("response_type").map(String::as_str) != Some("code")
    {
        return (
            StatusCode::BAD_REQUEST,
            "AADSTS900144: bad PKCE method or response type",
        )
            .into_response();
    }
    let code = format!("0.AQ{}", random(40));
    s.auth_codes.insert(
        code.clone(),
        AuthCode {
            client_id,
            redirect_uri: redirect_uri.clone(),
            challenge: challenge.clone(),
            scope: query.get("scope").cloned().unwrap_or_default(),
        },
    );
    let state_param = query.get("state").cloned().unwrap_or_default();
    let location = format!("{redirect_uri}?code={code}&state={state_param}&session_state=x");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}
