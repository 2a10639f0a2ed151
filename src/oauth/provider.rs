//! Where an account's tokens come from: endpoint URLs and default scopes.

use crate::config::{AccountConfig, Flow, Provider, Transport};

/// Scope for app-only tokens to Exchange Online SMTP.
pub const APP_ONLY_SCOPE: &str = "https://outlook.office365.com/.default";
/// Scope for delegated tokens; `offline_access` brings the refresh token.
pub const DELEGATED_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
/// The same for Microsoft Graph (`transport = "graph"`): one resource per token.
pub const GRAPH_APP_ONLY_SCOPE: &str = "https://graph.microsoft.com/.default";
pub const GRAPH_DELEGATED_SCOPE: &str = "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite offline_access";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token: String,
    pub device_authorization: Option<String>,
    pub authorization: Option<String>,
}

pub fn endpoints(account: &AccountConfig) -> Endpoints {
    match account.provider {
        Provider::Microsoft => {
            let tenant = account.tenant.as_deref().unwrap_or("organizations");
            let base = format!("{}/{tenant}/oauth2/v2.0", account.authority);
            Endpoints {
                token: account
                    .token_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("{base}/token")),
                device_authorization: Some(
                    account
                        .device_authorization_endpoint
                        .clone()
                        .unwrap_or_else(|| format!("{base}/devicecode")),
                ),
                authorization: Some(
                    account
                        .authorization_endpoint
                        .clone()
                        .unwrap_or_else(|| format!("{base}/authorize")),
                ),
            }
        }
        Provider::Generic => Endpoints {
            token: account.token_endpoint.clone().unwrap_or_default(),
            device_authorization: account.device_authorization_endpoint.clone(),
            authorization: account.authorization_endpoint.clone(),
        },
    }
}

pub fn scope(account: &AccountConfig) -> String {
    account.scope.clone().unwrap_or_else(|| {
        match (account.transport, account.flow) {
            (Transport::Smtp, Flow::ClientCredentials) => APP_ONLY_SCOPE,
            (Transport::Smtp, Flow::DeviceCode | Flow::AuthorizationCode) => DELEGATED_SCOPE,
            (Transport::Graph, Flow::ClientCredentials) => GRAPH_APP_ONLY_SCOPE,
            (Transport::Graph, Flow::DeviceCode | Flow::AuthorizationCode) => GRAPH_DELEGATED_SCOPE,
        }
        .to_owned()
    })
}
