//! Form POSTs to token endpoints, and their answers turned into [`TokenError`]s.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::error::{Endpoint, ErrorBody, TokenError};
use super::secret::Secret;
use crate::BoxFuture;

/// A successful token response (RFC 6749 5.1).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: Secret,
    #[serde(default)]
    pub token_type: String,
    #[serde(deserialize_with = "number_or_string")]
    pub expires_in: u64,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Some servers (Azure AD v1, a few proxies) send numbers as strings.
pub fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Text(String),
    }
    match Number::deserialize(d)? {
        Number::Int(n) => Ok(n),
        Number::Text(t) => t.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// One HTTP exchange as the token client sees it.
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Sends a form POST. Production uses HTTPS via reqwest; tests can answer in-process (with
/// Tokio's clock paused, where real sockets and timeouts do not mix).
pub trait Transport: Send + Sync {
    /// `Err` is a network-level failure, described for the admin.
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        form: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<RawResponse, String>>;
}

struct Https {
    http: reqwest::Client,
}

impl Transport for Https {
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        form: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<RawResponse, String>> {
        Box::pin(async move {
            let response = self
                .http
                .post(url)
                .header("Accept", "application/json")
                .form(form)
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            let body = response.bytes().await.map_err(|e| error_chain(&e))?;
            Ok(RawResponse {
                status,
                retry_after,
                body: body.to_vec(),
            })
        })
    }
}

#[derive(Clone)]
pub struct TokenClient {
    transport: std::sync::Arc<dyn Transport>,
}

impl TokenClient {
    pub fn with_transport(transport: std::sync::Arc<dyn Transport>) -> TokenClient {
        TokenClient { transport }
    }

    pub fn new() -> Result<TokenClient, TokenError> {
        let tls =
            crate::tls::client_config(None).map_err(|e| TokenError::Credential(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("smtprelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TokenError::Credential(format!("cannot set up HTTP: {e}")))?;
        Ok(TokenClient::with_transport(std::sync::Arc::new(Https {
            http,
        })))
    }

    /// POSTs `form` to `endpoint` at `url`. Errors name the endpoint and its URL, and carry
    /// the start of an error answer's body (a success's body may hold tokens: never shown).
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<T, TokenError> {
        let RawResponse {
            status,
            retry_after,
            body,
        } = self
            .transport
            .post_form(url, form)
            .await
            .map_err(|error| TokenError::Network {
                endpoint,
                url: url.to_owned(),
                error,
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| TokenError::BadResponse {
                endpoint,
                url: url.to_owned(),
                error: e.to_string(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) if !error.error.is_empty() && status != 429 && status < 500 => {
                Err(TokenError::Rejected {
                    status,
                    body: error,
                })
            }
            Ok(error) if !error.error.is_empty() => Err(TokenError::Http {
                endpoint,
                url: url.to_owned(),
                status,
                detail: error.error_description.unwrap_or(error.error),
                retry_after,
            }),
            _ => Err(TokenError::Http {
                endpoint,
                url: url.to_owned(),
                status,
                detail: body_excerpt(&body),
                retry_after,
            }),
        }
    }
}

/// The start of an answer's body, on one line: what a proxy or gateway said instead.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut excerpt: String = text.chars().take(300).collect();
    if excerpt.len() < text.len() {
        excerpt.push('…');
    }
    excerpt
}

/// reqwest's errors hide the useful part (connection refused, certificate unknown) in sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
