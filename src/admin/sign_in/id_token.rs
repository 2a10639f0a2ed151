//! The ID token the issuer's token endpoint returns, checked before anyone is signed in:
//! RS256 only, signed by a key of the issuer's JWKS (looked up by `kid`), `iss` the
//! configured issuer, `aud` the console's client id, `exp` not past (a minute's leeway for
//! clocks), and `nonce` the one this sign-in sent. The checks are `jsonwebtoken`'s; this
//! file only says which. [`Keys`] fetches the JWKS again when a token names a key it does
//! not know (the issuer rolled its keys), at most once a minute.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Who signed in, as the ID token says. Nothing else of the token is kept.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// App roles assigned to the user (Entra's `roles`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Group object ids (Entra's `groups`, when the app asks for them).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Claims {
    /// The names a `viewers`/`operators` entry may give for this user.
    pub fn user_names(&self) -> impl Iterator<Item = &str> {
        [&self.preferred_username, &self.upn, &self.email]
            .into_iter()
            .filter_map(|n| n.as_deref())
    }

    /// How the page and the audit log name the user: their UPN or e-mail, else `sub`.
    pub fn user(&self) -> &str {
        self.user_names().next().unwrap_or(&self.sub)
    }
}

#[derive(Deserialize)]
struct WithNonce {
    #[serde(default)]
    nonce: Option<String>,
    #[serde(flatten)]
    claims: Claims,
}

/// What this sign-in expects of its token.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("the ID token is not a JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("the ID token is signed with {0:?}: only RS256 is accepted")]
    Algorithm(Algorithm),
    #[error("the ID token names no key (kid)")]
    NoKeyId,
    #[error("the issuer's keys have no key {0:?}")]
    UnknownKey(String),
    #[error("the ID token was refused: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("the ID token's nonce is not this sign-in's")]
    Nonce,
    #[error("cannot read the issuer's keys: {0}")]
    Keys(String),
}

/// Checks `token` against `keys` and `expected`.
pub fn verify(token: &str, keys: &JwkSet, expected: Expected) -> Result<Claims, IdTokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(IdTokenError::Malformed)?;
    // Decided here, not by the token: "none" and HMAC with the public key never pass.
    if header.alg != Algorithm::RS256 {
        return Err(IdTokenError::Algorithm(header.alg));
    }
    let kid = header.kid.ok_or(IdTokenError::NoKeyId)?;
    let jwk = keys
        .find(&kid)
        .ok_or_else(|| IdTokenError::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(IdTokenError::Invalid)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 60;
    let data = jsonwebtoken::decode::<WithNonce>(token, &key, &validation)
        .map_err(IdTokenError::Invalid)?;
    if data.claims.nonce.as_deref() != Some(expected.nonce) {
        return Err(IdTokenError::Nonce);
    }
    Ok(data.claims.claims)
}

/// Fetched again on an unknown `kid` no sooner than this after the last fetch: a token
/// naming made-up keys cannot make the relay hammer the issuer.
const REFRESH_FLOOR: Duration = Duration::from_secs(60);

/// The issuer's JWKS, fetched from `jwks_uri`.
pub struct Keys {
    jwks_uri: String,
    http: reqwest::Client,
    current: tokio::sync::Mutex<(JwkSet, Option<Instant>)>,
}

impl Keys {
    pub fn new(jwks_uri: String, http: reqwest::Client) -> Keys {
        Keys {
            jwks_uri,
            http,
            current: tokio::sync::Mutex::new((JwkSet { keys: Vec::new() }, None)),
        }
    }

    /// [`verify`] with the keys known, fetched first when none are or the token names
    /// one they lack.
    pub async fn verify(
        &self,
        token: &str,
        expected: Expected<'_>,
    ) -> Result<Claims, IdTokenError> {
        // The lock is held across a fetch: concurrent sign-ins wait for it, never fetch twice.
        let mut current = self.current.lock().await;
        if current.1.is_none() {
            current.0 = self.fetch().await?;
            current.1 = Some(Instant::now());
        }
        match verify(token, &current.0, expected) {
            Err(IdTokenError::UnknownKey(_))
                if current.1.is_some_and(|at| at.elapsed() >= REFRESH_FLOOR) =>
            {
                current.0 = self.fetch().await?;
                current.1 = Some(Instant::now());
                verify(token, &current.0, expected)
            }
            other => other,
        }
    }

    async fn fetch(&self) -> Result<JwkSet, IdTokenError> {
        let error = |e: reqwest::Error| IdTokenError::Keys(format!("{}: {e}", self.jwks_uri));
        self.http
            .get(&self.jwks_uri)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(error)?
            .json()
            .await
            .map_err(error)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    /// An RSA key as an issuer holds it: the private half to sign, the public as a JWK.
    pub(crate) struct Signer {
        kid: String,
        key: EncodingKey,
        pub jwk: jsonwebtoken::jwk::Jwk,
    }

    impl Signer {
        pub(crate) fn new(kid: &str) -> Signer {
            let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
            let b64 = |n: &openssl::bn::BigNumRef| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_vec())
            };
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64(rsa.n()), "e": b64(rsa.e()),
            }))
            .unwrap();
            Signer {
                kid: kid.into(),
                key: EncodingKey::from_rsa_der(&rsa.private_key_to_der().unwrap()),
                jwk,
            }
        }

        pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.key).unwrap()
        }
    }

    const EXPECTED: Expected = Expected {
        issuer: "https://login.example/tenant/v2.0",
        client_id: "console-app",
        nonce: "n-0S6_WzA2Mj",
    };

    fn claims(exp_from_now: i64) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        serde_json::json!({
            "iss": EXPECTED.issuer, "aud": EXPECTED.client_id, "sub": "s-1",
            "iat": now, "nbf": now, "exp": now + exp_from_now, "nonce": EXPECTED.nonce,
            "name": "Ada Lovelace", "preferred_username": "ada@contoso.com",
            "roles": ["Relay.Operator"],
        })
    }

    fn set(signers: &[&Signer]) -> JwkSet {
        JwkSet {
            keys: signers.iter().map(|s| s.jwk.clone()).collect(),
        }
    }

    #[test]
    fn a_good_token_names_its_user_and_roles() {
        let issuer = Signer::new("k1");
        let who = verify(&issuer.sign(&claims(600)), &set(&[&issuer]), EXPECTED).unwrap();
        assert_eq!(who.user(), "ada@contoso.com");
        assert_eq!(who.roles, ["Relay.Operator"]);
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let issuer = Signer::new("k1");
        let keys = set(&[&issuer]);
        let refused = |token: &str| verify(token, &keys, EXPECTED).unwrap_err();

        // Signed by another key that claims the issuer's kid.
        let forger = Signer::new("k1");
        assert!(matches!(
            refused(&forger.sign(&claims(600))),
            IdTokenError::Invalid(_)
        ));
        // The payload changed after signing (roles added): the signature no longer holds.
        let good = issuer.sign(&claims(600));
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut payload = claims(600);
        payload["roles"] = serde_json::json!(["Relay.Operator", "Global.Admin"]);
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&payload).unwrap());
        assert!(matches!(
            refused(&parts.join(".")),
            IdTokenError::Invalid(_)
        ));
        // Another app's token, another issuer, expired past the leeway, another sign-in's nonce.
        for (key, value) in [
            ("aud", serde_json::json!("other-app")),
            ("iss", serde_json::json!("https://evil.example/v2.0")),
            (
                "exp",
                serde_json::json!(chrono::Utc::now().timestamp() - 120),
            ),
        ] {
            let mut c = claims(600);
            c[key] = value;
            let error = refused(&issuer.sign(&c));
            assert!(matches!(error, IdTokenError::Invalid(_)), "{key}: {error}");
        }
        let mut c = claims(600);
        c["nonce"] = serde_json::json!("replayed");
        assert!(matches!(refused(&issuer.sign(&c)), IdTokenError::Nonce));
        c.as_object_mut().unwrap().remove("nonce");
        assert!(matches!(refused(&issuer.sign(&c)), IdTokenError::Nonce));
        // A key the set does not hold.
        let stranger = Signer::new("k2");
        assert!(matches!(
            refused(&stranger.sign(&claims(600))),
            IdTokenError::UnknownKey(k) if k == "k2"
        ));
        // alg "none" and HS256 (the public key as an HMAC secret) are never accepted.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"alg":"none","kid":"k1"}"#),
            parts[1]
        );
        assert!(verify(&none, &keys, EXPECTED).is_err());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hmac =
            jsonwebtoken::encode(&header, &claims(600), &EncodingKey::from_secret(b"n")).unwrap();
        assert!(matches!(
            refused(&hmac),
            IdTokenError::Algorithm(Algorithm::HS256)
        ));
    }

    #[tokio::test]
    async fn an_unknown_key_fetches_the_set_again_at_most_once_a_minute() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (old, new) = (Signer::new("old"), Signer::new("new"));
        let served = std::sync::Arc::new(std::sync::Mutex::new(set(&[&old])));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let (served, fetches) = (served.clone(), fetches.clone());
            axum::Router::new().route(
                "/keys",
                axum::routing::get(move || {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let set = served.lock().unwrap().clone();
                    async move { axum::Json(set) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let keys = Keys::new(format!("http://{address}/keys"), reqwest::Client::new());
        let fetched = || fetches.load(std::sync::atomic::Ordering::SeqCst);

        keys.verify(&old.sign(&claims(600)), EXPECTED)
            .await
            .unwrap();
        assert_eq!(fetched(), 1);
        // The issuer rolls its keys: within the floor an unknown kid fetches nothing…
        *served.lock().unwrap() = set(&[&new]);
        assert!(matches!(
            keys.verify(&new.sign(&claims(600)), EXPECTED).await,
            Err(IdTokenError::UnknownKey(_))
        ));
        assert_eq!(fetched(), 1);
        // … after it, one fetch, and the new key is known.
        keys.current.lock().await.1 = Some(Instant::now() - REFRESH_FLOOR);
        keys.verify(&new.sign(&claims(600)), EXPECTED)
            .await
            .unwrap();
        assert_eq!(fetched(), 2);
        keys.verify(&new.sign(&claims(600)), EXPECTED)
            .await
            .unwrap();
        assert_eq!(fetched(), 2);
    }
}
