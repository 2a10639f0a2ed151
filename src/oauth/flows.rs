//! The OAuth2 grants: client credentials, refresh token, device code (RFC 8628) and
//! authorization code with PKCE (RFC 7636). Each returns the raw [`TokenResponse`]; the token
//! manager decides what to keep.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::credential::ClientCredential;
use super::error::{Endpoint, TokenError};
use super::http::{TokenClient, TokenResponse, number_or_string};
use super::provider::{self, Endpoints};
use super::secret::Secret;
use crate::config::AccountConfig;

pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Everything needed to ask for tokens on behalf of one configured account.
pub struct OAuthAccount {
    pub config: AccountConfig,
    pub endpoints: Endpoints,
    pub scope: String,
    pub credential: ClientCredential,
}

impl OAuthAccount {
    pub fn new(config: &AccountConfig) -> Result<OAuthAccount, TokenError> {
        Ok(OAuthAccount {
            endpoints: provider::endpoints(config),
            scope: provider::scope(config),
            credential: ClientCredential::load(config)?,
            config: config.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    async fn request(
        &self,
        client: &TokenClient,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, TokenError> {
        form.push(("client_id", self.config.client_id.clone()));
        self.credential
            .add_to(&mut form, &self.config.client_id, &self.endpoints.token)?;
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        client
            .post_form(Endpoint::Token, &self.endpoints.token, &pairs)
            .await
    }

    /// App-only token (client credentials grant).
    pub async fn client_credentials(
        &self,
        client: &TokenClient,
    ) -> Result<TokenResponse, TokenError> {
        if matches!(self.credential, ClientCredential::None) {
            return Err(TokenError::Credential(format!(
                "account {}: client_credentials needs client_secret_file or a certificate",
                self.name()
            )));
        }
        self.request(
            client,
            vec![
                ("grant_type", "client_credentials".into()),
                ("scope", self.scope.clone()),
            ],
        )
        .await
    }

    /// Exchanges a refresh token; the response usually carries a new one (rotation).
    pub async fn refresh(
        &self,
        client: &TokenClient,
        refresh_token: &Secret,
    ) -> Result<TokenResponse, TokenError> {
        self.request(
            client,
            vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", refresh_token.expose().to_owned()),
                ("scope", self.scope.clone()),
            ],
        )
        .await
    }

    /// Device code login: shows the code through `prompt`, then polls until the user has
    /// signed in, declined, or the code expired.
    pub async fn device_code(
        &self,
        client: &TokenClient,
        prompt: impl FnOnce(&DeviceAuthorization),
    ) -> Result<TokenResponse, TokenError> {
        let endpoint = self
            .endpoints
            .device_authorization
            .as_deref()
            .ok_or_else(|| {
                TokenError::Credential(format!(
                    "account {}: no device_authorization_endpoint configured",
                    self.name()
                ))
            })?;
        let form = [
            ("client_id", self.config.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let authorization: DeviceAuthorization = client
            .post_form(Endpoint::DeviceAuthorization, endpoint, &form)
            .await?;
        prompt(&authorization);
        let mut interval = Duration::from_secs(authorization.interval.clamp(1, 60));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(authorization.expires_in);
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::Login("the device code expired before the sign-in finished; run `smtprelay token login` again".into()));
            }
            let poll = self
                .request(
                    client,
                    vec![
                        ("grant_type", DEVICE_CODE_GRANT.into()),
                        ("device_code", authorization.device_code.expose().to_owned()),
                    ],
                )
                .await;
            match poll {
                Ok(tokens) => return Ok(tokens),
                Err(TokenError::Rejected { body, .. }) => match body.error.as_str() {
                    "authorization_pending" => {}
                    // RFC 8628 3.5: add 5 seconds to the interval for this and later polls.
                    "slow_down" => interval += Duration::from_secs(5),
                    "authorization_declined" | "access_denied" => {
                        return Err(TokenError::Login("the sign-in was declined".into()));
                    }
                    "expired_token" | "code_expired" => {
                        return Err(TokenError::Login("the device code expired before the sign-in finished; run `smtprelay token login` again".into()));
                    }
                    "bad_verification_code" => {
                        return Err(TokenError::Login(
                            "the identity platform did not recognise the device code".into(),
                        ));
                    }
                    _ => return Err(TokenError::Rejected { status: 400, body }),
                },
                // Keep polling through network trouble until the code expires.
                Err(e) if e.class() == super::error::ErrorClass::Transient => {
                    tracing::warn!(target: "tokens", account = self.name(), error = %e, "device code poll failed; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Authorization code login with PKCE. The browser is sent to `prompt`'s URL; the code
    /// comes back to a listener on `http://localhost:{redirect_port}/`, or as a redirected URL
    /// pasted into `pasted` (when the browser runs on another machine).
    pub async fn authorization_code(
        &self,
        client: &TokenClient,
        prompt: impl FnOnce(&str),
        mut pasted: mpsc::Receiver<String>,
    ) -> Result<TokenResponse, TokenError> {
        let endpoint = self.endpoints.authorization.as_deref().ok_or_else(|| {
            TokenError::Credential(format!(
                "account {}: no authorization_endpoint configured",
                self.name()
            ))
        })?;
        let pkce = Pkce::new();
        let state = random_token(16);
        let redirect_uri = format!("http://localhost:{}/", self.config.redirect_port);
        let url = url::Url::parse_with_params(
            endpoint,
            &[
                ("client_id", self.config.client_id.as_str()),
                ("response_type", "code"),
                ("redirect_uri", redirect_uri.as_str()),
                ("response_mode", "query"),
                ("scope", self.scope.as_str()),
                ("state", state.as_str()),
                ("code_challenge", pkce.challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| TokenError::Credential(format!("authorization_endpoint: {e}")))?;
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", self.config.redirect_port)).await;
        if let Err(e) = &listener {
            tracing::warn!(target: "tokens", port = self.config.redirect_port, error = %e,
                "cannot listen for the browser's redirect; paste the redirected URL instead");
        }
        prompt(url.as_str());
        let query = loop {
            tokio::select! {
                accepted = accept_callback(listener.as_ref().ok()) => {
                    if let Some(query) = accepted {
                        break query;
                    }
                }
                line = pasted.recv() => match line {
                    Some(line) => match query_of(&line) {
                        Some(query) => break query,
                        None => tracing::warn!(target: "tokens", "that is not the redirected URL (it has no code= or error=)"),
                    },
                    None if listener.is_err() => {
                        return Err(TokenError::Login("no redirect received".into()));
                    }
                    None => std::future::pending::<()>().await,
                },
            }
        };
        let params: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        if params.get("state") != Some(&state) {
            return Err(TokenError::Login(
                "the redirect's state does not match this login (a stale or forged redirect)"
                    .into(),
            ));
        }
        if let Some(error) = params.get("error") {
            let description = params.get("error_description").map_or("", String::as_str);
            return Err(TokenError::Login(format!(
                "the sign-in failed: {error} {description}"
            )));
        }
        let code = params
            .get("code")
            .ok_or_else(|| TokenError::Login("the redirect carries no code".into()))?;
        self.request(
            client,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", code.clone()),
                ("redirect_uri", redirect_uri),
                ("code_verifier", pkce.verifier.expose().to_owned()),
                ("scope", self.scope.clone()),
            ],
        )
        .await
    }
}

/// The answer to a device authorization request (RFC 8628 3.2).
#[derive(Debug, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    #[serde(deserialize_with = "number_or_string")]
    pub expires_in: u64,
    #[serde(default = "default_interval", deserialize_with = "number_or_string")]
    pub interval: u64,
    #[serde(default)]
    pub message: Option<String>,
}

fn default_interval() -> u64 {
    5
}

/// RFC 7636 proof key: the verifier stays here, its S256 challenge goes to the authorize URL.
pub(crate) struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let verifier = random_token(32); // 43 characters, within RFC 7636's 43–128
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        Pkce {
            verifier: Secret::new(verifier),
            challenge,
        }
    }
}

/// `bytes` random bytes, base64url: state, nonce, PKCE verifier, session id, CSRF token.
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The query part of a pasted redirect URL (or of a bare query string).
fn query_of(line: &str) -> Option<String> {
    let line = line.trim();
    let query = match line.split_once('?') {
        Some((_, query)) => query,
        None => line,
    };
    let query = query.split('#').next().unwrap_or(query);
    (query.contains("code=") || query.contains("error=")).then(|| query.to_owned())
}

/// Serves one browser redirect; returns its query, or `None` for a request without one
/// (favicon and the like). Never returns when there is no listener.
async fn accept_callback(listener: Option<&tokio::net::TcpListener>) -> Option<String> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let (mut socket, _) = listener.accept().await.ok()?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let target = text.lines().next()?.split(' ').nth(1)?.to_owned();
    let query = query_of(&target);
    let body = if query.is_some() {
        "<html><body><h1>smtprelay</h1><p>Sign-in received. You can close this window.</p></body></html>"
    } else {
        "<html><body>Waiting for the sign-in redirect.</body></html>"
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let pkce = Pkce::new();
        assert_eq!(pkce.verifier.expose().len(), 43);
        let expected = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            pkce.verifier.expose().as_bytes(),
        ));
        assert_eq!(pkce.challenge, expected);
    }

    #[test]
    fn pasted_urls() {
        assert_eq!(
            query_of("http://localhost:8400/?code=abc&state=xyz#frag").as_deref(),
            Some("code=abc&state=xyz")
        );
        assert_eq!(
            query_of("code=abc&state=1").as_deref(),
            Some("code=abc&state=1")
        );
        assert_eq!(query_of("hello"), None);
    }
}
