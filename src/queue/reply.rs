//! Replies from the upstream, as read off the wire and as kept in a delivery state: plain
//! data, without advice. What they mean, and what an admin can do about them, is
//! `delivery::meaning`'s, said where a reply is shown.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamReply {
    pub code: u16,
    /// Enhanced status such as `5.7.3`, when the first line carries one.
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
    /// Graph's answer this SMTP-shaped reply stands for; `None` for Exchange's SMTP replies.
    pub graph: Option<GraphAnswer>,
}

/// What Graph answered: the HTTP status and the error code of its body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphAnswer {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
}

impl UpstreamReply {
    /// A one-line reply, as recorded in a delivery state: `550 5.1.10 Recipient not found`.
    pub fn new(code: u16, text: &str) -> UpstreamReply {
        let mut reply = UpstreamReply {
            code,
            enhanced: None,
            lines: vec![text.to_owned()],
            graph: None,
        };
        reply.parse_enhanced();
        reply
    }

    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    pub(crate) fn parse_enhanced(&mut self) {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let candidate = first.split(' ').next().unwrap_or("");
        let parts: Vec<&str> = candidate.split('.').collect();
        let valid = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if valid {
            self.enhanced = Some(candidate.to_owned());
        }
    }

    pub fn is_status(&self, code: u16, enhanced: &str) -> bool {
        self.code == code && self.enhanced.as_deref() == Some(enhanced)
    }
}

/// How a reply is kept in a delivery state: `{code, enhanced, text}`. States written before
/// replies were typed hold the reply line as one string (`550 5.1.1 text`), read the same way.
#[derive(Serialize, Deserialize)]
struct Stored {
    code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enhanced: Option<String>,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    graph: Option<GraphAnswer>,
}

impl Serialize for UpstreamReply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Stored {
            code: self.code,
            enhanced: self.enhanced.clone(),
            text: self.text(),
            graph: self.graph.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UpstreamReply {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Typed(Stored),
            Line(String),
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::Typed(stored) => UpstreamReply {
                code: stored.code,
                enhanced: stored.enhanced,
                lines: vec![stored.text],
                graph: stored.graph,
            },
            Either::Line(line) => {
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| serde::de::Error::custom(format!("not a reply: {line:?}")))?;
                UpstreamReply::new(code, line.get(4..).unwrap_or(""))
            }
        })
    }
}

impl fmt::Display for UpstreamReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> UpstreamReply {
        UpstreamReply::new(code, text)
    }

    #[test]
    fn enhanced_codes_are_parsed() {
        assert_eq!(
            reply(535, "5.7.3 Authentication unsuccessful")
                .enhanced
                .as_deref(),
            Some("5.7.3")
        );
        assert_eq!(reply(250, "relay.example Hello").enhanced, None);
        assert_eq!(
            reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound")
                .enhanced
                .as_deref(),
            Some("5.1.10")
        );
    }

    #[test]
    fn replies_are_stored_typed_and_read_back_from_the_old_one_line_form() {
        let typed = reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound");
        let json = serde_json::to_string(&typed).unwrap();
        assert_eq!(
            json,
            r#"{"code":550,"enhanced":"5.1.10","text":"5.1.10 RESOLVER.ADR.RecipientNotFound"}"#
        );
        assert_eq!(serde_json::from_str::<UpstreamReply>(&json).unwrap(), typed);
        let old: UpstreamReply =
            serde_json::from_str(r#""550 5.1.10 RESOLVER.ADR.RecipientNotFound""#).unwrap();
        assert_eq!(old, typed);
        assert!(serde_json::from_str::<UpstreamReply>(r#""garbage""#).is_err());
    }
}
