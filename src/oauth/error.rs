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

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}", explain(.body))]
    Rejected { status: u16, body: ErrorBody },
    #[error("token endpoint answered HTTP {status}: {detail}")]
    Http {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the token endpoint: {0}")]
    Network(String),
    #[error("the token endpoint's answer is not understood: {0}")]
    BadResponse(String),
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
}

impl TokenError {
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::Rejected { body, status } => classify(body, *status),
            TokenError::Http { status, .. } if *status == 429 || *status >= 500 => {
                ErrorClass::Transient
            }
            TokenError::Http { .. } => ErrorClass::Misconfigured,
            TokenError::Network(_) | TokenError::BadResponse(_) => ErrorClass::Transient,
            TokenError::NotLoggedIn(_) | TokenError::Login(_) => ErrorClass::Reauthenticate,
            TokenError::Credential(_) | TokenError::UnknownAccount(_) => ErrorClass::Misconfigured,
            // A store that cannot be read or written is for the admin to fix (key, permissions).
            TokenError::Store(_) => ErrorClass::Misconfigured,
            TokenError::Held(_) => ErrorClass::Misconfigured,
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

fn classify(body: &ErrorBody, status: u16) -> ErrorClass {
    match body.aadsts() {
        Some(70008 | 700082 | 50173 | 70043 | 50076 | 50079 | 50078 | 65004 | 50126) => {
            return ErrorClass::Reauthenticate;
        }
        Some(
            65001 | 700022 | 70011 | 7000215 | 7000222 | 700027 | 7000218 | 700025 | 700016 | 90002
            | 7000112 | 700023 | 500011 | 50194 | 7000012 | 700054,
        ) => return ErrorClass::Misconfigured,
        Some(90006 | 700024 | 90033 | 50058) => return ErrorClass::Transient,
        _ => {}
    }
    if status == 429 || status >= 500 || body.error == "temporarily_unavailable" {
        return ErrorClass::Transient;
    }
    match body.error.as_str() {
        // A refresh token or code that the server no longer accepts.
        "invalid_grant" | "interaction_required" | "consent_required" => ErrorClass::Reauthenticate,
        _ => ErrorClass::Misconfigured,
    }
}

/// A diagnosis an admin can act on, with the server's own words after it.
pub fn explain(body: &ErrorBody) -> String {
    let advice = match body.aadsts() {
        Some(70008) => {
            "the refresh token has expired or was revoked; log in again with `smtprelay token login`"
        }
        Some(700082) => {
            "the refresh token expired after 90 days without use; log in again with `smtprelay token login`"
        }
        Some(50173) => {
            "the login was revoked (password change or admin revocation); log in again with `smtprelay token login`"
        }
        Some(70043) => {
            "a Conditional Access sign-in frequency policy ended the session; log in again with `smtprelay token login`"
        }
        Some(50076 | 50079 | 50078) => {
            "multi-factor authentication is required; log in again interactively with `smtprelay token login`"
        }
        Some(65001) => {
            "the app has no consent for the requested permission; grant admin consent in Entra ID (API permissions)"
        }
        Some(65004) => "the user declined consent; log in again and accept",
        Some(700022 | 70011) => {
            "the scope is invalid: ask for one resource per token (SMTP: https://outlook.office365.com/.default app-only, https://outlook.office.com/SMTP.Send delegated)"
        }
        Some(7000215) => "the client secret is wrong: use the secret's Value, not its Secret ID",
        Some(7000222) => {
            "the client secret has expired: create a new one in Entra ID and update client_secret_file"
        }
        Some(700027) => {
            "the client assertion signature does not verify: the certificate uploaded to the app registration does not match client_private_key"
        }
        Some(7000218) => {
            "the app needs a client secret or certificate, or 'Allow public client flows' must be enabled for device code login"
        }
        Some(700025) => {
            "the app is a public client, so no client secret may be sent: remove client_secret_file for this flow"
        }
        Some(700016) => {
            "the application (client_id) was not found in the tenant: check client_id and tenant, and that the app is consented in that tenant"
        }
        Some(90002) => "the tenant was not found: check tenant (a GUID or a verified domain)",
        Some(7000112) => "the application is disabled in Entra ID",
        Some(7000012) => "the grant was obtained for a different tenant: check tenant",
        Some(500011) => {
            "the resource (Exchange Online) is not available in the tenant: check the scope and that the tenant has Exchange Online"
        }
        Some(700024) => {
            "the client assertion is outside its valid time range: check the system clock"
        }
        Some(90006) => "the identity platform had a temporary problem; retrying",
        Some(50126) => "invalid user name or password",
        _ => match body.error.as_str() {
            "invalid_grant" => {
                "the grant is no longer valid; log in again with `smtprelay token login`"
            }
            "invalid_client" => {
                "the client credentials are wrong (client_id, secret or certificate)"
            }
            "unauthorized_client" => {
                "the app is not allowed to use this flow; check the app registration"
            }
            "invalid_scope" => "the scope is not valid for this app",
            "temporarily_unavailable" => {
                "the identity platform is temporarily unavailable; retrying"
            }
            _ => "the token request was refused",
        },
    };
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
        ] {
            let error = TokenError::Rejected {
                status: 400,
                body: body("invalid_grant", code),
            };
            assert_eq!(error.class(), class, "AADSTS{code}");
        }
        let throttled = TokenError::Http {
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
