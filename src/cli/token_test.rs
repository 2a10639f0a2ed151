//! `smtprelay token test`: get a token, look inside it, then log in to the upstream with it
//! (SMTP AUTH XOAUTH2, or an authenticated Graph request that sends nothing), and say in plain
//! words what is wrong at the first step that fails.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::clock::unix_secs as unix_now;
use crate::config::{Flow, Transport};
use crate::delivery::UpstreamConnection;
use crate::delivery::agent::client::explain_client_error;
use crate::oauth::error::TokenError;
use crate::oauth::manager::TokenManager;

/// Audiences Exchange Online accepts for SMTP: the app-only and delegated resource URIs and
/// Exchange's application ID.
const SMTP_AUDIENCES: &[&str] = &[
    "https://outlook.office365.com",
    "https://outlook.office.com",
    "00000002-0000-0ff1-ce00-000000000000",
];
const GRAPH_AUDIENCES: &[&str] = &[
    "https://graph.microsoft.com",
    "00000003-0000-0000-c000-000000000000",
];

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// False when this step failed (the test stops, or ends failed).
    pub ok: bool,
    /// Passed, but with something the admin should look at.
    pub warning: bool,
    pub title: String,
    pub detail: String,
}

/// What the look inside the token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Worth a word, not a reason to stop: the login decides.
    Warn,
    Fail,
}

impl Step {
    fn pass(title: impl Into<String>, detail: impl Into<String>) -> Step {
        Step::new(Verdict::Pass, title, detail)
    }
    fn fail(title: impl Into<String>, detail: impl Into<String>) -> Step {
        Step::new(Verdict::Fail, title, detail)
    }
    fn new(verdict: Verdict, title: impl Into<String>, detail: impl Into<String>) -> Step {
        Step {
            ok: verdict != Verdict::Fail,
            warning: verdict == Verdict::Warn,
            title: title.into(),
            detail: detail.into(),
        }
    }
}

/// Runs every check in order, stopping at the first failure that makes the rest pointless.
pub async fn token_test(
    manager: &TokenManager,
    account: &str,
    mailbox_override: Option<&str>,
    helo_name: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let (config, endpoint) = match manager.oauth_account(account) {
        Ok(oauth) => (oauth.config.clone(), oauth.endpoints.token.clone()),
        Err(e) => {
            steps.push(Step::fail("account", e.to_string()));
            return steps;
        }
    };
    // Always a new token from the endpoint: a cached one would pass while the endpoint is
    // gone or the credential revoked, which is what the admin is testing for.
    let token = match manager.refresh_now(account).await {
        Ok(token) => {
            let minutes = token.expires_at.saturating_sub(unix_now()) / 60;
            steps.push(Step::pass(
                "token",
                format!("new token from {endpoint}; valid for {minutes} more minutes"),
            ));
            token
        }
        Err(e) => {
            let detail = match &e {
                // The other errors of a request name the endpoint already.
                TokenError::Rejected { .. } => {
                    format!("the token endpoint {endpoint} refused: {e}")
                }
                _ => e.to_string(),
            };
            steps.push(Step::fail("token", detail));
            return steps;
        }
    };

    match decode_claims(token.token.expose()) {
        None => steps.push(Step::pass(
            "claims",
            "the token is opaque (not a JWT), so its audience cannot be checked here",
        )),
        Some(claims) => {
            let (mut verdict, mut detail) = judge_claims(&claims, config.flow, config.transport);
            // The audiences and permissions judged are Microsoft's: another provider's
            // tokens may say it differently and still work, so the login decides.
            if verdict == Verdict::Fail && config.provider != crate::config::Provider::Microsoft {
                verdict = Verdict::Warn;
                detail.push_str(
                    " (the provider is not microsoft, so this may not matter: trying the login)",
                );
            }
            steps.push(Step::new(verdict, "claims", detail));
            if verdict == Verdict::Fail {
                return steps;
            }
        }
    }

    let mailbox = match (mailbox_override, config.mailbox.fixed()) {
        (Some(m), _) => m.to_owned(),
        (None, None) => {
            steps.push(Step::fail(
                "upstream",
                "mailbox is \"{sender}\": name a mailbox to test with --mailbox",
            ));
            return steps;
        }
        (None, Some(m)) => m.to_owned(),
    };
    if config.transport == Transport::Graph {
        match crate::delivery::agent::transport::graph::probe(
            &config,
            &mailbox,
            token.token.expose(),
        )
        .await
        {
            Ok(detail) => steps.push(Step::pass("graph", detail)),
            Err(detail) => steps.push(Step::fail("graph", detail)),
        }
        return steps;
    }
    let tls = match crate::tls::client_config(config.upstream.ca_file.as_deref()) {
        Ok(tls) => Arc::new(tls),
        Err(e) => {
            steps.push(Step::fail("upstream", e.to_string()));
            return steps;
        }
    };
    let upstream = &config.upstream;
    let mut connection = match UpstreamConnection::connect(upstream, tls, helo_name).await {
        Ok(connection) => {
            steps.push(Step::pass(
                "connect",
                format!(
                    "{}:{} with TLS, certificate verified",
                    upstream.host, upstream.port
                ),
            ));
            connection
        }
        Err(e) => {
            steps.push(Step::fail("connect", explain_client_error(&e)));
            return steps;
        }
    };
    match connection.auth_xoauth2(&mailbox, &token.token).await {
        Ok(()) => steps.push(Step::pass(
            "auth",
            format!("AUTH XOAUTH2 as {mailbox} accepted"),
        )),
        Err(e) => {
            if let Some(reply) = e.reply()
                && reply.is_status(535, "5.7.3")
            {
                manager.invalidate(account, &token.token);
            }
            steps.push(Step::fail(
                "auth",
                format!("as {mailbox}: {}", explain_client_error(&e)),
            ));
        }
    }
    connection.quit().await;
    steps
}

/// The claims of a JWT, without checking its signature (only Exchange can, and does).
pub fn decode_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn judge_claims(claims: &serde_json::Value, flow: Flow, transport: Transport) -> (Verdict, String) {
    let text = |key: &str| claims[key].as_str().unwrap_or("").to_owned();
    let audience = text("aud");
    let who = [
        text("upn"),
        text("unique_name"),
        text("preferred_username"),
        text("appid"),
        text("azp"),
        text("oid"),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or_default();
    let roles: Vec<String> = claims["roles"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let scopes = text("scp");
    // What the token says, leaving out what it does not say (a provider other than
    // Microsoft may name no tenant), with its expiry as a time people read.
    let permissions = if roles.is_empty() {
        ("scp", scopes.clone())
    } else {
        ("roles", roles.join(","))
    };
    let expires = claims["exp"]
        .as_u64()
        .map(crate::clock::rfc3339)
        .unwrap_or_default();
    let summary = [
        ("aud", audience.clone()),
        ("identity", who),
        ("tenant", text("tid")),
        permissions,
        ("expires", expires),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(name, value)| format!("{name}={value}"))
    .collect::<Vec<_>>()
    .join(" ");
    let delegated = matches!(flow, Flow::DeviceCode | Flow::AuthorizationCode);
    if transport == Transport::Graph {
        let has = |permission: &str| {
            if delegated {
                scopes.split(' ').any(|s| s == permission)
            } else {
                roles.iter().any(|r| r == permission)
            }
        };
        let may_send = has("Mail.Send");
        return if !GRAPH_AUDIENCES.contains(&audience.as_str()) {
            (
                Verdict::Fail,
                format!(
                    "{summary}: the Graph transport needs a Microsoft Graph token (scope https://graph.microsoft.com/.default app-only, https://graph.microsoft.com/Mail.Send delegated); check `scope`"
                ),
            )
        } else if !may_send {
            (
                Verdict::Fail,
                format!(
                    "{summary}: the token lacks Mail.Send; add it under API permissions (Microsoft Graph, {}) and grant admin consent",
                    if delegated {
                        "delegated"
                    } else {
                        "application"
                    }
                ),
            )
        } else if !has("Mail.ReadWrite") {
            // Small messages go; the draft path for large ones would be refused.
            (
                Verdict::Warn,
                format!(
                    "{summary}; without Mail.ReadWrite, messages over Graph's 4 MB request (about 3 MB of message) cannot be sent: add it like Mail.Send"
                ),
            )
        } else {
            (Verdict::Pass, summary)
        };
    }
    if GRAPH_AUDIENCES.contains(&audience.as_str()) {
        return (
            Verdict::Fail,
            format!(
                "{summary}: this is a Microsoft Graph token; SMTP needs an Exchange Online token (scope https://outlook.office365.com/.default app-only, https://outlook.office.com/SMTP.Send delegated)"
            ),
        );
    }
    if !SMTP_AUDIENCES.contains(&audience.as_str()) {
        return (
            Verdict::Fail,
            format!("{summary}: the audience is not Exchange Online; check the scope"),
        );
    }
    match flow {
        Flow::ClientCredentials if !roles.iter().any(|r| r == "SMTP.SendAsApp") => (
            Verdict::Fail,
            format!(
                "{summary}: the app has no SMTP.SendAsApp application permission; add it under API permissions (Office 365 Exchange Online) and grant admin consent"
            ),
        ),
        Flow::DeviceCode | Flow::AuthorizationCode
            if !scopes.split(' ').any(|s| s == "SMTP.Send") =>
        {
            (
                Verdict::Fail,
                format!("{summary}: the token lacks the SMTP.Send delegated permission"),
            )
        }
        _ => (Verdict::Pass, summary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_leaves_out_what_the_token_does_not_say_and_dates_its_expiry() {
        let keycloak = json!({"aud": "https://outlook.office365.com", "roles": ["SMTP.SendAsApp"],
            "azp": "smtprelay", "exp": 1_796_400_000u64});
        let (_, summary) = judge_claims(&keycloak, Flow::ClientCredentials, Transport::Smtp);
        assert_eq!(
            summary,
            "aud=https://outlook.office365.com identity=smtprelay roles=SMTP.SendAsApp expires=2026-12-04T16:00:00Z"
        );
    }

    #[test]
    fn audiences_and_permissions_are_judged() {
        let app_only = json!({"aud": "https://outlook.office365.com", "roles": ["SMTP.SendAsApp"], "appid": "a"});
        assert_eq!(
            judge_claims(&app_only, Flow::ClientCredentials, Transport::Smtp).0,
            Verdict::Pass
        );
        let graph = json!({"aud": "https://graph.microsoft.com", "roles": ["Mail.Send"]});
        let (verdict, detail) = judge_claims(&graph, Flow::ClientCredentials, Transport::Smtp);
        assert!(
            verdict == Verdict::Fail && detail.contains("Microsoft Graph token"),
            "{detail}"
        );
        let no_role =
            json!({"aud": "https://outlook.office365.com", "roles": ["full_access_as_app"]});
        assert!(
            judge_claims(&no_role, Flow::ClientCredentials, Transport::Smtp)
                .1
                .contains("SMTP.SendAsApp")
        );
        let delegated =
            json!({"aud": "https://outlook.office.com", "scp": "SMTP.Send", "upn": "u@c"});
        assert_eq!(
            judge_claims(&delegated, Flow::DeviceCode, Transport::Smtp).0,
            Verdict::Pass
        );
    }

    #[test]
    fn graph_accounts_need_a_graph_token_with_mail_send() {
        let graph =
            json!({"aud": "https://graph.microsoft.com", "roles": ["Mail.Send", "Mail.ReadWrite"]});
        let (verdict, detail) = judge_claims(&graph, Flow::ClientCredentials, Transport::Graph);
        assert_eq!(verdict, Verdict::Pass, "{detail}");
        let send_only = json!({"aud": "https://graph.microsoft.com", "roles": ["Mail.Send"]});
        let (verdict, detail) = judge_claims(&send_only, Flow::ClientCredentials, Transport::Graph);
        assert!(
            verdict == Verdict::Warn && detail.contains("without Mail.ReadWrite"),
            "{detail}"
        );
        let smtp = json!({"aud": "https://outlook.office365.com", "roles": ["SMTP.SendAsApp"]});
        let (verdict, detail) = judge_claims(&smtp, Flow::ClientCredentials, Transport::Graph);
        assert!(
            verdict == Verdict::Fail && detail.contains("needs a Microsoft Graph token"),
            "{detail}"
        );
        let no_role = json!({"aud": "https://graph.microsoft.com", "roles": ["Mail.Read"]});
        let (verdict, detail) = judge_claims(&no_role, Flow::ClientCredentials, Transport::Graph);
        assert!(
            verdict == Verdict::Fail
                && detail.contains("Mail.Send")
                && detail.contains("application")
        );
        let delegated = json!({"aud": "https://graph.microsoft.com", "scp": "Mail.Send User.Read"});
        assert_eq!(
            judge_claims(&delegated, Flow::DeviceCode, Transport::Graph).0,
            Verdict::Warn
        );
        let delegated =
            json!({"aud": "https://graph.microsoft.com", "scp": "Mail.Send Mail.ReadWrite"});
        assert_eq!(
            judge_claims(&delegated, Flow::DeviceCode, Transport::Graph).0,
            Verdict::Pass
        );
    }
}
