//! The sign-in itself: `GET /signin` sends the browser to the issuer's authorization
//! endpoint (authorization code with PKCE S256, `state` and `nonce`); `GET /signin/callback`
//! takes the code back, redeems it at the token endpoint with the verifier, checks the ID
//! token ([`super::id_token`]), and opens a session ([`super::sessions`]): an opaque random
//! id in a `Secure`, `HttpOnly`, `SameSite=Lax` cookie, forgotten after `session_timeout`
//! unused. Nothing the issuer returned is kept but who signed in (the ID token's claims)
//! and their role. The callback always lands on `/`: no address from the request is ever
//! followed (no open redirect).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::id_token::{Claims, Expected, IdTokenError, Keys};
use super::sessions::{Pending, Session, Sessions};
use crate::config::SignInConfig;
use crate::oauth::credential::ClientCredential;
use crate::oauth::flows::{Pkce, random_token};

pub const COOKIE: &str = "smtprelay_session";

/// The issuer's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the issuer cannot be reached or answered badly: {0}")]
    Issuer(String),
    #[error("the console's client credential cannot be used: {0}")]
    Credential(String),
    #[error("this sign-in is unknown or too old: start again")]
    UnknownState,
    #[error("the issuer refused the sign-in: {0}")]
    Refused(String),
    #[error("{0}")]
    IdToken(#[from] IdTokenError),
    #[error("{0}")]
    Busy(#[from] super::sessions::TooManySignIns),
}

pub struct SignIn {
    pub config: SignInConfig,
    /// How the console proves itself at the token endpoint: a secret or a signed assertion.
    credential: ClientCredential,
    http: reqwest::Client,
    discovery: tokio::sync::OnceCell<(Discovery, Keys)>,
    /// The process's: they outlive this configuration.
    sessions: Arc<Sessions>,
}

impl SignIn {
    /// Checks and reads what `config` names; `sessions` are the process's, which
    /// [`Sessions::adopt`] brings under `config` once it runs.
    pub fn new(config: SignInConfig, sessions: Arc<Sessions>) -> Result<SignIn, String> {
        // The config allows a secret or a certificate, never neither.
        let credential = ClientCredential::from_files(
            config.client_secret_file.as_deref(),
            config
                .client_certificate
                .as_deref()
                .zip(config.client_private_key.as_deref()),
            config.client_assertion_algorithm,
        )
        .map_err(|e| format!("[admin.sign_in]: {e}"))?;
        let http = crate::tls::client_config(None)
            .map_err(|e| e.to_string())
            .and_then(|tls| {
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(Duration::from_secs(15))
                    // The issuer's answers are read, never followed.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("[admin.sign_in]: {e}"))?;
        Ok(SignIn {
            config,
            credential,
            http,
            discovery: tokio::sync::OnceCell::new(),
            sessions,
        })
    }

    async fn discovery(&self) -> Result<&(Discovery, Keys), SignInError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
                let discovery: Discovery = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| SignInError::Issuer(format!("{url}: {e}")))?
                    .json()
                    .await
                    .map_err(|e| SignInError::Issuer(format!("{url}: {e}")))?;
                if discovery.issuer.trim_end_matches('/') != self.config.issuer {
                    return Err(SignInError::Issuer(format!(
                        "{url} names the issuer {:?}, not {:?}",
                        discovery.issuer, self.config.issuer
                    )));
                }
                let keys = Keys::new(discovery.jwks_uri.clone(), self.http.clone());
                Ok((discovery, keys))
            })
            .await
    }

    /// Where to send the browser to sign in.
    pub async fn start(&self) -> Result<String, SignInError> {
        let (discovery, _) = self.discovery().await?;
        let (state, nonce, pkce) = (random_token(32), random_token(32), Pkce::new());
        let mut url = url::Url::parse(&discovery.authorization_endpoint)
            .map_err(|e| SignInError::Issuer(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", "openid profile email")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        self.sessions
            .begin(state, Pending::new(pkce.verifier, nonce))?;
        Ok(url.into())
    }

    /// The browser is back with `code` for `state`: the new session's id and what it holds,
    /// or `Ok((None, claims))` for someone the lists do not name.
    pub async fn finish(
        &self,
        code: &str,
        state: &str,
    ) -> Result<(Option<(String, Session)>, Claims), SignInError> {
        let pending = self
            .sessions
            .take_pending(state)
            .ok_or(SignInError::UnknownState)?;
        let (discovery, keys) = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", self.config.redirect_url.clone()),
            ("client_id", self.config.client_id.clone()),
            ("code_verifier", pending.verifier.expose().to_owned()),
        ];
        self.credential
            .add_to(&mut form, &self.config.client_id, &discovery.token_endpoint)
            .map_err(|e| SignInError::Credential(e.to_string()))?;
        let answer = self
            .http
            .post(&discovery.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| SignInError::Issuer(format!("{}: {e}", discovery.token_endpoint)))?;
        let status = answer.status();
        let body: serde_json::Value = answer
            .json()
            .await
            .map_err(|e| SignInError::Issuer(format!("{}: {e}", discovery.token_endpoint)))?;
        let Some(id_token) = body["id_token"].as_str().filter(|_| status.is_success()) else {
            return Err(SignInError::Refused(format!(
                "{status}: {}",
                body["error_description"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("no ID token")
            )));
        };
        // Only the ID token is read; access and refresh tokens are dropped with `body`.
        let claims = keys
            .verify(
                id_token,
                Expected {
                    issuer: &self.config.issuer,
                    client_id: &self.config.client_id,
                    nonce: &pending.nonce,
                },
            )
            .await?;
        let Some(role) = super::access(&self.config, &claims) else {
            return Ok((None, claims));
        };
        let session = Session::new(claims.clone(), role);
        let id = self
            .sessions
            .open(session.clone(), self.config.session_timeout);
        Ok((Some((id, session)), claims))
    }

    /// The session `id` names, if it was used within `session_timeout` (which it renews).
    pub fn session(&self, id: &str) -> Option<Session> {
        self.sessions.get(id, self.config.session_timeout)
    }

    pub fn sign_out(&self, id: &str) -> Option<Session> {
        self.sessions.close(id)
    }

    /// The cookie that carries session `id`.
    pub fn cookie(id: &str) -> String {
        format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Lax")
    }

    /// The cookie that ends it in the browser.
    pub fn expired_cookie() -> String {
        format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
    }
}

/// The session id in a request's `Cookie` headers.
pub fn session_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}
