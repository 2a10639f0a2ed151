//! Token errors, classified by what the relay should do about them (see
//! `exchange-online.md`): wait for a new login, wait for the admin to fix the configuration,
//! or retry with backoff. Each carries a diagnosis in plain words.

use std::time::Duration;

use serde::Deserialize;

use super::store::StoreError;

/// What to do about a token error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Someone must log in again (`smtprelay token login`); mail is held meanwhile.
    Reauthenticate,
    /// The app registration, secret, certificate, tenant or consent is wrong; mail is held and
    /// the request is not retried in a hot loop.
    Misconfigured,
    /// Network trouble, HTTP 5xx or 429: retry with backoff.
    Transient,
}

/// The JSON error body of the Microsoft identity platform (and of RFC 6749 servers).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u64>,
}

impl ErrorBody {
    /// The AADSTS code: the first of `error_codes`, or one quoted in the description.
    pub fn aadsts(&self) -> Option<u64> {
        self.error_codes.first().copied().or_else(|| {
            let description = self.error_description.as_deref()?;
            let start = description.find("AADSTS")? + 6;
            let digits: String = description[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
    }
}

/// Which of the identity provider's endpoints a request went to (errors name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    DeviceAuthorization,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Token => "token endpoint",
            Endpoint::DeviceAuthorization => "device authorization endpoint",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}", explain(.body))]
    Rejected { status: u16, body: ErrorBody },
    /// An answer that is not an OAuth error: `detail` is the start of its body.
    #[error("the {endpoint} {url} answered HTTP {status}: {detail}")]
    Http {
        endpoint: Endpoint,
        url: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the {endpoint} {url}: {error}")]
    Network {
        endpoint: Endpoint,
        url: String,
        error: String,
    },
    #[error("the {endpoint} {url} sent an answer that is not understood: {error}")]
    BadResponse {
        endpoint: Endpoint,
        url: String,
        error: String,
    },
    #[error("no token yet: log in once with `smtprelay token login --account {0}`")]
    NotLoggedIn(String),
    #[error("{0}")]
    Credential(String),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    #[error("login failed: {0}")]
    Login(String),
    #[error("{0}")]
    Held(String),
    /// The relay (or its generation) is stopping: a wait for a retry, the floor between
    /// requests or another node's request ended early. No request failed.
    #[error("stopping")]
    Stopped,
}

impl TokenError {
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::Rejected { body, status } => classify(body, *status),
            TokenError::Http { status, .. } if *status == 429 || *status >= 500 => {
                ErrorClass::Transient
            }
            TokenError::Http { .. } => ErrorClass::Misconfigured,
            TokenError::Network { .. } | TokenError::BadResponse { .. } => ErrorClass::Transient,
            TokenError::NotLoggedIn(_) | TokenError::Login(_) => ErrorClass::Reauthenticate,
            TokenError::Credential(_) | TokenError::UnknownAccount(_) => ErrorClass::Misconfigured,
            // A store that does not answer comes back by itself (Redis restarting); one that
            // cannot be read or written is for the admin to fix (key, permissions).
            TokenError::Store(e) if e.is_transient() => ErrorClass::Transient,
            TokenError::Store(_) => ErrorClass::Misconfigured,
            TokenError::Held(_) => ErrorClass::Misconfigured,
            // Nothing to hold the account for: the next generation or run asks again.
            TokenError::Stopped => ErrorClass::Transient,
        }
    }

    /// How long the server asked us to wait (HTTP 429 / 503 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// AADSTS700024: the client assertion's times are off; a fresh assertion may pass.
    pub fn is_clock_skew(&self) -> bool {
        matches!(self, TokenError::Rejected { body, .. } if body.aadsts() == Some(700024))
    }
}

/// The AADSTS codes the relay knows: what each means for the account and what an admin can
/// do about it, in one place (the table in `exchange-online.md`).
const AADSTS: &[Row<&[u64]>] = &[
    (
        &[70008],
        ErrorClass::Reauthenticate,
        "the refresh token has expired or was revoked; log in again with `smtprelay token login`",
    ),
    (
        &[700082],
        ErrorClass::Reauthenticate,
        "the refresh token expired after 90 days without use; log in again with `smtprelay token login`",
    ),
    (
        &[50173],
        ErrorClass::Reauthenticate,
        "the login was revoked (password change or admin revocation); log in again with `smtprelay token login`",
    ),
    (
        &[70043],
        ErrorClass::Reauthenticate,
        "a Conditional Access sign-in frequency policy ended the session; log in again with `smtprelay token login`",
    ),
    (
        &[50076, 50079, 50078],
        ErrorClass::Reauthenticate,
        "multi-factor authentication is required; log in again interactively with `smtprelay token login`",
    ),
    (
        &[65004],
        ErrorClass::Reauthenticate,
        "the user declined consent; log in again and accept",
    ),
    (
        &[50126],
        ErrorClass::Reauthenticate,
        "invalid user name or password",
    ),
    (
        &[65001],
        ErrorClass::Misconfigured,
        "the app has no consent for the requested permission; grant admin consent in Entra ID (API permissions)",
    ),
    (
        &[700022, 70011],
        ErrorClass::Misconfigured,
        "the scope is invalid: ask for one resource per token (SMTP: https://outlook.office365.com/.default app-only, https://outlook.office.com/SMTP.Send delegated)",
    ),
    (
        &[7000215],
        ErrorClass::Misconfigured,
        "the client secret is wrong: use the secret's Value, not its Secret ID",
    ),
    (
        &[7000222],
        ErrorClass::Misconfigured,
        "the client secret has expired: create a new one in Entra ID and update client_secret_file",
    ),
    (
        &[700027],
        ErrorClass::Misconfigured,
        "the client assertion signature does not verify: the certificate uploaded to the app registration does not match client_private_key",
    ),
    (
        &[7000218],
        ErrorClass::Misconfigured,
        "the app needs a client secret or certificate, or 'Allow public client flows' must be enabled for device code login",
    ),
    (
        &[700025],
        ErrorClass::Misconfigured,
        "the app is a public client, so no client secret may be sent: remove client_secret_file for this flow",
    ),
    (
        &[700016],
        ErrorClass::Misconfigured,
        "the application (client_id) was not found in the tenant: check client_id and tenant, and that the app is consented in that tenant",
    ),
    (
        &[90002],
        ErrorClass::Misconfigured,
        "the tenant was not found: check tenant (a GUID or a verified domain)",
    ),
    (
        &[7000112],
        ErrorClass::Misconfigured,
        "the application is disabled in Entra ID",
    ),
    (
        &[7000012],
        ErrorClass::Misconfigured,
        "the grant was obtained for a different tenant: check tenant",
    ),
    (
        &[700023],
        ErrorClass::Misconfigured,
        "the client assertion is for another tenant's authority: check tenant",
    ),
    (
        &[50194],
        ErrorClass::Misconfigured,
        "the app is single-tenant: set tenant to its own tenant (GUID or domain), not common or organizations",
    ),
    (
        &[700054],
        ErrorClass::Misconfigured,
        "the app registration does not allow this response type; check its authentication settings",
    ),
    (
        &[500011],
        ErrorClass::Misconfigured,
        "the resource (Exchange Online) is not available in the tenant: check the scope and that the tenant has Exchange Online",
    ),
    (
        &[700024],
        ErrorClass::Transient,
        "the client assertion is outside its valid time range: check the system clock",
    ),
    (
        &[90006, 90033],
        ErrorClass::Transient,
        "the identity platform had a temporary problem; retrying",
    ),
    (
        &[50196],
        ErrorClass::Transient,
        "Entra saw a request loop from this client (too many token requests in a short time) and refuses it for a while; backing off. If it recurs, look for other programs asking with this app registration",
    ),
    (
        &[50058],
        ErrorClass::Transient,
        "the identity platform found no session for the user; retrying",
    ),
];

/// The OAuth error codes of RFC 6749, for answers without a known AADSTS code.
const OAUTH: &[Row<&str>] = &[
    (
        "invalid_grant",
        ErrorClass::Reauthenticate,
        "the grant is no longer valid; log in again with `smtprelay token login`",
    ),
    (
        "interaction_required",
        ErrorClass::Reauthenticate,
        "the user must sign in interactively; log in again with `smtprelay token login`",
    ),
    (
        "consent_required",
        ErrorClass::Reauthenticate,
        "the user must consent; log in again with `smtprelay token login`",
    ),
    (
        "invalid_client",
        ErrorClass::Misconfigured,
        "the client credentials are wrong (client_id, secret or certificate)",
    ),
    (
        "unauthorized_client",
        ErrorClass::Misconfigured,
        "the app is not allowed to use this flow; check the app registration",
    ),
    (
        "invalid_scope",
        ErrorClass::Misconfigured,
        "the scope is not valid for this app",
    ),
    (
        "temporarily_unavailable",
        ErrorClass::Transient,
        "the identity platform is temporarily unavailable; retrying",
    ),
];

type Row<K> = (K, ErrorClass, &'static str);

fn by_code(body: &ErrorBody) -> Option<&'static Row<&'static [u64]>> {
    let code = body.aadsts()?;
    AADSTS.iter().find(|(codes, ..)| codes.contains(&code))
}

fn by_error(body: &ErrorBody) -> Option<&'static Row<&'static str>> {
    OAUTH.iter().find(|(error, ..)| *error == body.error)
}

fn classify(body: &ErrorBody, status: u16) -> ErrorClass {
    if let Some((_, class, _)) = by_code(body) {
        return *class;
    }
    // A throttled or failing server says nothing about the grant, whatever its error says.
    if status == 429 || status >= 500 {
        return ErrorClass::Transient;
    }
    by_error(body).map_or(ErrorClass::Misconfigured, |(_, class, _)| *class)
}

/// A diagnosis an admin can act on, with the server's own words after it.
pub fn explain(body: &ErrorBody) -> String {
    let advice = by_code(body)
        .map(|(_, _, advice)| *advice)
        .or_else(|| by_error(body).map(|(_, _, advice)| *advice))
        .unwrap_or("the token request was refused");
    let server = body
        .error_description
        .as_deref()
        .map(|d| d.lines().next().unwrap_or(d))
        .unwrap_or(&body.error);
    format!("{advice} (server said: {server})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &str, code: u64) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            error_description: Some(format!("AADSTS{code}: something. Trace ID: x")),
            error_codes: vec![code],
        }
    }

    #[test]
    fn classes_follow_the_aadsts_table() {
        for (code, class) in [
            (70008, ErrorClass::Reauthenticate),
            (700082, ErrorClass::Reauthenticate),
            (50173, ErrorClass::Reauthenticate),
            (70043, ErrorClass::Reauthenticate),
            (65001, ErrorClass::Misconfigured),
            (7000215, ErrorClass::Misconfigured),
            (7000222, ErrorClass::Misconfigured),
            (700016, ErrorClass::Misconfigured),
            (90002, ErrorClass::Misconfigured),
            (90006, ErrorClass::Transient),
            (50196, ErrorClass::Transient),
        ] {
            let error = TokenError::Rejected {
                status: 400,
                body: body("invalid_grant", code),
            };
            assert_eq!(error.class(), class, "AADSTS{code}");
        }
        let throttled = TokenError::Http {
            endpoint: Endpoint::Token,
            url: "https://login.example/token".into(),
            status: 429,
            detail: String::new(),
            retry_after: None,
        };
        assert_eq!(throttled.class(), ErrorClass::Transient);
        let unknown = ErrorBody {
            error: "invalid_grant".into(),
            ..Default::default()
        };
        assert_eq!(classify(&unknown, 400), ErrorClass::Reauthenticate);
    }

    #[test]
    fn each_code_has_one_row() {
        let mut codes: Vec<u64> = AADSTS
            .iter()
            .flat_map(|(c, ..)| c.iter().copied())
            .collect();
        let listed = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), listed, "an AADSTS code in two rows");
        // The advice follows the class: a code that needs a new login says how.
        for (codes, class, advice) in AADSTS {
            if *class == ErrorClass::Reauthenticate && codes[0] != 50126 && codes[0] != 65004 {
                assert!(advice.contains("token login"), "{codes:?}");
            }
        }
    }

    #[test]
    fn code_from_description_when_error_codes_is_missing() {
        let body = ErrorBody {
            error: "invalid_client".into(),
            error_description: Some("AADSTS7000215: Invalid client secret provided.".into()),
            error_codes: vec![],
        };
        assert_eq!(body.aadsts(), Some(7000215));
        assert!(explain(&body).starts_with("the client secret is wrong"));
    }
}
