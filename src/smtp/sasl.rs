//! SASL PLAIN (RFC 4616) and LOGIN decoding for SMTP AUTH. No I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::SmtpError;

/// `334` challenge text for LOGIN's user name: base64 of `Username:`.
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
/// `334` challenge text for LOGIN's password: base64 of `Password:`.
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// The SASL mechanism an `AUTH` command names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    /// One the relay does not offer, as the client spelt it (refused with 504 5.5.4).
    Unsupported(String),
}

impl Mechanism {
    /// What EHLO offers, in its order.
    pub const OFFERED: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// Mechanism names are case-insensitive (RFC 4422 3.1).
    pub fn parse(name: &str) -> Mechanism {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Mechanism::Plain,
            "LOGIN" => Mechanism::Login,
            _ => Mechanism::Unsupported(name.to_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Unsupported(name) => name,
        }
    }
}

#[derive(PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Decodes one client response line; `*` cancels the exchange (RFC 4954 4).
pub fn decode_response(line: &str) -> Result<Vec<u8>, SmtpError> {
    let line = line.trim();
    if line == "*" {
        return Err(SmtpError::AuthCancelled);
    }
    // RFC 4954: "=" is an empty initial response.
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SmtpError::AuthMalformed)
}

/// PLAIN: `authzid NUL authcid NUL password`. An authzid other than the user is refused:
/// the relay has no notion of acting for someone else.
pub fn decode_plain(response: &[u8]) -> Result<Credentials, SmtpError> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SmtpError::AuthMalformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SmtpError::AuthMalformed);
    let credentials = Credentials {
        username: text(username)?,
        password: text(password)?,
    };
    if !authzid.is_empty() && authzid != username {
        return Err(SmtpError::AuthFailed);
    }
    Ok(credentials)
}

pub fn decode_text(response: &[u8]) -> Result<String, SmtpError> {
    String::from_utf8(response.to_vec()).map_err(|_| SmtpError::AuthMalformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_are_named_in_any_case_and_unknown_ones_kept_as_spelt() {
        assert_eq!(Mechanism::parse("plain"), Mechanism::Plain);
        assert_eq!(Mechanism::parse("LoGiN"), Mechanism::Login);
        assert_eq!(
            Mechanism::parse("CRAM-MD5"),
            Mechanism::Unsupported("CRAM-MD5".into())
        );
        let offered: Vec<&str> = Mechanism::OFFERED.iter().map(Mechanism::name).collect();
        assert_eq!(offered, ["PLAIN", "LOGIN"]);
    }

    #[test]
    fn plain() {
        let response = decode_response(&STANDARD.encode(b"\0user\0secret")).unwrap();
        let credentials = decode_plain(&response).unwrap();
        assert_eq!(credentials.username, "user");
        assert_eq!(credentials.password, "secret");
        assert_eq!(decode_plain(b"user\0secret"), Err(SmtpError::AuthMalformed));
        assert_eq!(
            decode_plain(b"other\0user\0secret"),
            Err(SmtpError::AuthFailed)
        );
        assert_eq!(decode_response("*"), Err(SmtpError::AuthCancelled));
        assert_eq!(decode_response("!!!"), Err(SmtpError::AuthMalformed));
    }

    #[test]
    fn prompts_are_the_standard_ones() {
        assert_eq!(
            STANDARD.decode(LOGIN_USERNAME_PROMPT).unwrap(),
            b"Username:"
        );
        assert_eq!(
            STANDARD.decode(LOGIN_PASSWORD_PROMPT).unwrap(),
            b"Password:"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let credentials = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}
