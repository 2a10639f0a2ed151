//! Replies from the upstream, and what Exchange Online's replies mean in plain words (the
//! table in `exchange-online.md`).

use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamReply {
    pub code: u16,
    /// Enhanced status such as `5.7.3`, when the first line carries one.
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl UpstreamReply {
    /// A one-line reply, as recorded in a delivery state: `550 5.1.10 Recipient not found`.
    pub fn new(code: u16, text: &str) -> UpstreamReply {
        let mut reply = UpstreamReply {
            code,
            enhanced: None,
            lines: vec![text.to_owned()],
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

    fn mentions(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    /// The reply with its diagnosis, if it has one: what `queue list` and the logs show.
    pub fn described(&self) -> String {
        match self.diagnosis() {
            Some(diagnosis) => format!("{self} ({diagnosis})"),
            None => self.to_string(),
        }
    }

    /// A diagnosis an admin can act on, or `None` for replies that need no explanation.
    pub fn diagnosis(&self) -> Option<&'static str> {
        let enhanced = self.enhanced.as_deref().unwrap_or("");
        Some(match (self.code, enhanced) {
            (535, "5.7.3") => {
                "Exchange refused the token: the access token expired or has the wrong audience (it must be for https://outlook.office365.com, not Microsoft Graph), the mailbox in `mailbox` is not one this app may send as (app-only needs New-ServicePrincipal and Add-MailboxPermission), or the user behind a delegated token is not that mailbox"
            }
            (535, "5.7.139") => {
                "SMTP AUTH is disabled for this mailbox or tenant (security defaults, a Conditional Access policy, or Set-CASMailbox -SmtpClientAuthenticationDisabled $true): enable it with Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $false"
            }
            (550, "5.7.30") => {
                "Basic authentication is disabled: the relay must use XOAUTH2 (check that the account's flow and token are in use)"
            }
            (421, "4.7.66") | (454, "4.7.66") => {
                "TLS 1.0/1.1 is not accepted by Exchange Online; the relay uses TLS 1.2 or later, so a TLS-inspecting proxy in between is downgrading"
            }
            (432, "4.3.2") | (451, "4.3.2") => {
                "Exchange is throttling concurrent connections or messages for this mailbox; the relay slows down and retries"
            }
            (_, "4.7.500") | (_, "4.7.501") | (_, "4.7.502") => {
                "Exchange is throttling this sender; the relay slows down and retries"
            }
            (554, "5.2.0") if self.mentions("SubmissionQuotaExceeded") => {
                "the mailbox reached its daily recipient limit (10,000 per rolling 24 h); mail is paused for this mailbox and retried later"
            }
            (554, "5.2.0") if self.mentions("SendAsDenied") => {
                "the mailbox is not allowed to send as this From address: grant Send As (Add-RecipientPermission) or send from the mailbox's own address"
            }
            (550, "5.7.60") => {
                "the mailbox is not allowed to send as this From address: grant Send As (Add-RecipientPermission) or send from the mailbox's own address"
            }
            (554, "5.2.2") => {
                "the sending mailbox is full (Sent Items counts against its quota); free space or raise the quota"
            }
            (550, "5.1.8") => {
                "Exchange has blocked this mailbox from sending (suspected spam source); unblock it in the Microsoft 365 Defender portal (Restricted entities)"
            }
            (_, "5.7.705") | (_, "5.7.708") => {
                "Exchange has blocked the tenant or the sending IP address; see the Microsoft 365 admin center"
            }
            (452, "4.5.3") => {
                "too many recipients in one transaction; the relay splits the recipient list"
            }
            (530, "5.7.57") => "the upstream requires authentication before MAIL FROM",
            (504, "5.7.4") => {
                "the upstream does not accept this authentication mechanism before STARTTLS"
            }
            _ => return None,
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
    fn exchange_replies_are_explained() {
        assert!(
            reply(535, "5.7.3 Authentication unsuccessful [SN4PR0601CA0001]")
                .diagnosis()
                .unwrap()
                .contains("wrong audience")
        );
        assert!(reply(535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.").diagnosis().unwrap().contains("Set-CASMailbox"));
        assert!(
            reply(
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
            )
            .diagnosis()
            .unwrap()
            .contains("daily recipient limit")
        );
        assert!(reply(554, "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied").diagnosis().unwrap().contains("Send As"));
        assert_eq!(reply(250, "2.0.0 OK").diagnosis(), None);
    }
}
