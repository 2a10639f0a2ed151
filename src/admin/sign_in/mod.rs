//! `[admin.sign_in]`: browsers sign in with OpenID Connect (Entra ID or any issuer).
//! `id_token.rs` checks what the issuer's token endpoint returns; `access` here decides what
//! the person it names may do.

pub mod flow;
pub mod id_token;
pub mod sessions;

use crate::config::{Principal, SignInConfig};

/// What a signed-in person may do on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Sees the page, acts on nothing.
    Viewer,
    /// Sees the page and acts on the queue and tokens.
    Operator,
}

/// Operators first: someone in both lists is an operator. `None`: neither (403, and
/// nothing of the queue is shown).
pub fn access(config: &SignInConfig, who: &id_token::Claims) -> Option<Role> {
    let matches = |list: &[Principal]| list.iter().any(|p| holds(p, who));
    if matches(&config.operators) {
        Some(Role::Operator)
    } else if matches(&config.viewers) {
        Some(Role::Viewer)
    } else {
        None
    }
}

fn holds(principal: &Principal, who: &id_token::Claims) -> bool {
    match principal {
        Principal::Role(role) => who.roles.iter().any(|r| r == role),
        // Object ids are GUIDs; Entra writes them in lower case, an admin may not.
        Principal::Group(group) => who.groups.iter().any(|g| g.eq_ignore_ascii_case(group)),
        Principal::User(user) => who.user_names().any(|name| name.eq_ignore_ascii_case(user)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(viewers: &[&str], operators: &[&str]) -> SignInConfig {
        let list = |items: &[&str]| items.iter().map(|i| Principal::parse(i).unwrap()).collect();
        SignInConfig {
            issuer: "https://login.example/v2.0".into(),
            client_id: "console".into(),
            client_secret_file: None,
            client_certificate: None,
            client_private_key: None,
            client_assertion_algorithm: crate::config::AssertionAlgorithm::Ps256,
            redirect_url: "https://relay.example/signin/callback".into(),
            viewers: list(viewers),
            operators: list(operators),
            session_timeout: std::time::Duration::from_secs(3600),
        }
    }

    fn claims(roles: &[&str], groups: &[&str], upn: &str) -> id_token::Claims {
        id_token::Claims {
            sub: "subject".into(),
            name: Some("Ada".into()),
            preferred_username: Some(upn.into()),
            upn: None,
            email: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn roles_groups_and_user_names_each_grant_what_their_list_says() {
        let c = config(
            &["role:Relay.Viewer", "group:AAAA-1"],
            &["role:Relay.Operator", "Boss@Contoso.com"],
        );
        assert_eq!(
            access(&c, &claims(&["Relay.Operator"], &[], "x@contoso.com")),
            Some(Role::Operator)
        );
        assert_eq!(
            access(&c, &claims(&["Relay.Viewer"], &[], "x@contoso.com")),
            Some(Role::Viewer)
        );
        assert_eq!(
            access(&c, &claims(&[], &["aaaa-1"], "x@contoso.com")),
            Some(Role::Viewer)
        );
        assert_eq!(
            access(&c, &claims(&[], &[], "boss@contoso.com")),
            Some(Role::Operator)
        );
        // In both lists: an operator.
        assert_eq!(
            access(
                &c,
                &claims(&["Relay.Viewer", "Relay.Operator"], &[], "x@contoso.com")
            ),
            Some(Role::Operator)
        );
        // A role of another app, or a name that only looks alike: nothing.
        assert_eq!(
            access(
                &c,
                &claims(&["Relay.Viewers"], &["aaaa-2"], "boss@contoso.co")
            ),
            None
        );
    }
}
