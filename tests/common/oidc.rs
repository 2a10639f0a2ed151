//! An OpenID Connect issuer double, shaped like Entra ID's v2.0 endpoints under
//! `http://127.0.0.1:<port>/tenant/v2.0`: discovery, JWKS, an authorize endpoint that sends
//! the browser straight back with a code for the scripted user, and a token endpoint that
//! checks the code, client, redirect URI and PKCE verifier strictly and answers with an
//! RS256 ID token (optionally tampered with, to see the relay refuse it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use base64::Engine;

pub const CLIENT_ID: &str = "console-app";
pub const CLIENT_SECRET: &str = "console-secret";

/// What the token endpoint does to the ID token it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    None,
    /// Signed by a key that is not in the JWKS but claims its kid.
    Signature,
    Audience,
    Nonce,
    Expired,
}

impl Tamper {
    /// Every way the double can spoil an ID token.
    pub const EVERY: [Tamper; 4] = [
        Tamper::Signature,
        Tamper::Audience,
        Tamper::Nonce,
        Tamper::Expired,
    ];
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: String,
    challenge: String,
    user: serde_json::Value,
}

pub struct OidcState {
    /// Claims of whoever signs in next (name, preferred_username, roles, …).
    pub user: serde_json::Value,
    pub tamper: Tamper,
    grants: HashMap<String, Grant>,
    /// Token requests refused, and why.
    pub refusals: Vec<String>,
    /// The certificate (DER) uploaded to the console app: its client assertions are then
    /// accepted, as is the secret.
    pub certificate: Option<Vec<u8>>,
    /// Browsers sent to sign in (authorize requests answered).
    pub authorizations: usize,
    /// Where the browser goes back to, instead of the redirect URI's scheme, host and port
    /// (path and query kept): the relay's admin endpoint listens on port 0, so its
    /// `redirect_url` cannot name the port. The token request must still name the
    /// redirect URI the authorize request did.
    pub callback_base: Option<String>,
}

#[derive(Clone)]
pub struct Oidc {
    pub issuer: String,
    state: Arc<Mutex<OidcState>>,
    key: Arc<jsonwebtoken::EncodingKey>,
    forged: Arc<jsonwebtoken::EncodingKey>,
    jwks: serde_json::Value,
}

fn rsa_key() -> (
    openssl::rsa::Rsa<openssl::pkey::Private>,
    jsonwebtoken::EncodingKey,
) {
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&rsa.private_key_to_der().unwrap());
    (rsa, key)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Oidc {
    pub async fn start() -> Oidc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/tenant/v2.0", listener.local_addr().unwrap());
        let (rsa, key) = rsa_key();
        let (_, forged) = rsa_key();
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()),
        }]});
        let oidc = Oidc {
            issuer,
            state: Arc::new(Mutex::new(OidcState {
                user: serde_json::json!({}),
                tamper: Tamper::None,
                grants: HashMap::new(),
                refusals: Vec::new(),
                certificate: None,
                authorizations: 0,
                callback_base: None,
            })),
            key: Arc::new(key),
            forged: Arc::new(forged),
            jwks,
        };
        let routes = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .route("/authorize", get(authorize))
            .route("/token", post(token));
        let app = axum::Router::new()
            .nest("/tenant/v2.0", routes)
            .with_state(oidc.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        oidc
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, OidcState> {
        self.state.lock().unwrap()
    }

    /// The next sign-in is this user's.
    pub fn sign_in_as(&self, name: &str, upn: &str, roles: &[&str]) {
        self.state().user = serde_json::json!({
            "sub": format!("sub-{upn}"), "name": name, "preferred_username": upn,
            "roles": roles,
        });
    }
}

async fn discovery(State(oidc): State<Oidc>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "issuer": oidc.issuer,
        "authorization_endpoint": format!("{}/authorize", oidc.issuer),
        "token_endpoint": format!("{}/token", oidc.issuer),
        "jwks_uri": format!("{}/keys", oidc.issuer),
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn keys(State(oidc): State<Oidc>) -> impl IntoResponse {
    axum::Json(oidc.jwks.clone())
}

async fn authorize(
    State(oidc): State<Oidc>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("response_type") != "code"
        || field("code_challenge_method") != "S256"
        || field("code_challenge").is_empty()
        || field("state").is_empty()
        || field("nonce").is_empty()
        || !field("scope").split(' ').any(|s| s == "openid")
    {
        return (axum::http::StatusCode::BAD_REQUEST, "bad authorize request").into_response();
    }
    let code = format!("code-{}", ulid::Ulid::new());
    let mut state = oidc.state();
    state.authorizations += 1;
    let user = state.user.clone();
    state.grants.insert(
        code.clone(),
        Grant {
            client_id: field("client_id"),
            redirect_uri: field("redirect_uri"),
            nonce: field("nonce"),
            challenge: field("code_challenge"),
            user,
        },
    );
    let mut back = url::Url::parse(&field("redirect_uri")).unwrap();
    if let Some(base) = &state.callback_base {
        back = url::Url::parse(base).unwrap().join(back.path()).unwrap();
    }
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &field("state"));
    Redirect::to(back.as_str()).into_response()
}

async fn token(
    State(oidc): State<Oidc>,
    Form(form): Form<HashMap<String, String>>,
) -> axum::response::Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut state = oidc.state();
    // A code is good once.
    let grant = state.grants.remove(&field("code"));
    let verifier = field("code_verifier");
    let challenge = b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    let refusal = match &grant {
        None => Some("unknown or used code"),
        Some(_) if field("grant_type") != "authorization_code" => Some("grant_type"),
        Some(g) if g.client_id != field("client_id") || field("client_id") != CLIENT_ID => {
            Some("client_id")
        }
        Some(_) if !client_proven(&oidc, &state, &form) => Some("client credential"),
        Some(g) if g.redirect_uri != field("redirect_uri") => Some("redirect_uri"),
        Some(g) if verifier.len() < 43 || g.challenge != challenge => Some("code_verifier"),
        Some(_) => None,
    };
    if let Some(why) = refusal {
        state.refusals.push(why.to_owned());
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response();
    }
    let grant = grant.unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut claims = grant.user.clone();
    let tamper = state.tamper;
    claims["iss"] = oidc.issuer.clone().into();
    claims["aud"] = if tamper == Tamper::Audience {
        "another-app".into()
    } else {
        CLIENT_ID.into()
    };
    claims["iat"] = now.into();
    claims["exp"] = if tamper == Tamper::Expired {
        (now - 3600).into()
    } else {
        (now + 3600).into()
    };
    claims["nonce"] = if tamper == Tamper::Nonce {
        "another-sign-in".into()
    } else {
        grant.nonce.into()
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = if tamper == Tamper::Signature {
        &oidc.forged
    } else {
        &oidc.key
    };
    let id_token = jsonwebtoken::encode(&header, &claims, key).unwrap();
    axum::Json(serde_json::json!({
        "token_type": "Bearer", "expires_in": 3600,
        "access_token": "graph-access-token", "id_token": id_token,
    }))
    .into_response()
}

/// The console app proves itself with its secret, or an assertion signed with the
/// certificate's key (checked as the Entra double checks them: signature, thumbprint,
/// audience = this token endpoint, issuer and subject = the client id, times).
fn client_proven(oidc: &Oidc, state: &OidcState, form: &HashMap<String, String>) -> bool {
    match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), None) => secret == CLIENT_SECRET,
        (None, Some(assertion)) => {
            let app = super::entra::App {
                client_id: CLIENT_ID.into(),
                certificate: state.certificate.clone(),
                ..Default::default()
            };
            form.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && super::entra::check_assertion(&app, assertion, &format!("{}/token", oidc.issuer))
                    .is_ok()
        }
        _ => false,
    }
}

/// An HTTP client that reads redirects rather than following them, as the tests step
/// through a browser's requests one by one.
pub fn browser() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in {response:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Signs in to the admin endpoint at `admin` through the double; the callback's response.
/// The relay's `redirect_url` names `localhost` without a port (the endpoint's port is only
/// known once bound to port 0): the callback is requested at `admin`, path and query as the
/// double sent them.
pub async fn sign_in(admin: &str) -> reqwest::Response {
    let http = browser();
    let start = http.get(format!("{admin}/signin")).send().await.unwrap();
    assert_eq!(start.status(), 303, "{start:?}");
    let authorize = http.get(location(&start)).send().await.unwrap();
    assert!(authorize.status().is_redirection(), "{authorize:?}");
    let back = url::Url::parse(&location(&authorize)).unwrap();
    assert_eq!(back.path(), "/signin/callback");
    http.get(format!("{admin}{}?{}", back.path(), back.query().unwrap()))
        .send()
        .await
        .unwrap()
}

/// A relay (the tokens world: Entra and Exchange doubles, one account) whose console signs
/// in with `oidc` (viewers: `Relay.Viewer`, operators: `Relay.Operator`), holding one
/// message, "Quarterly scan", that the upstream defers. The world, the directory of the
/// console's secret, and the message's ID.
pub async fn console(oidc: &Oidc) -> (super::tokens::World, tempfile::TempDir, String) {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("console.secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    let extra = format!(
        "\n[admin.sign_in]\nissuer = {:?}\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = {secret:?}\nredirect_url = \"http://localhost/signin/callback\"\n\
         viewers = [\"role:Relay.Viewer\"]\noperators = [\"role:Relay.Operator\"]\n",
        oidc.issuer
    );
    let w = super::tokens::World::start(super::tokens::WorldOptions {
        extra: &extra,
        ..Default::default()
    })
    .await;
    w.exchange
        .state()
        .rcpt_replies
        .insert("a@fabrikam.com".into(), "451 4.3.0 try later".into());
    let mut smtp = w.relay.connect().await;
    smtp.expect("EHLO app", 250).await;
    let body = b"Subject: Quarterly scan\r\n\r\nx\r\n";
    let sent = smtp
        .send_message("scanner@contoso.com", &["a@fabrikam.com"], body)
        .await;
    assert_eq!(sent.0, 250);
    let id = w.relay.queued()[0].0.envelope.id.to_string();
    (w, secret_dir, id)
}

/// The audit log line of an action on `id`.
pub fn audit_line(logs: &super::CapturedLogs, id: &str) -> String {
    let text = logs.text();
    text.lines()
        .find(|l| l.contains("admin action") && l.contains(id))
        .unwrap_or_else(|| panic!("no audit line in {text}"))
        .to_owned()
}
