//! What Exchange Online's SMTP replies mean: one table (the one in `exchange-online.md`) that
//! says, for each reply Exchange is known to give, what the queue does with it and what an
//! admin can do about it. The first row that matches wins; replies no row names follow their
//! code's class.

use crate::queue::reply::UpstreamReply;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// 535 5.7.3: the token was refused; refresh it and try once more.
    TokenRejected,
    /// 452 4.5.3: too many recipients for one transaction; send the rest in another.
    TooManyRecipients,
    /// Concurrency or rate throttling: slow the account down, retry later.
    Throttled,
    /// The mailbox's daily quota is used up: pause the mailbox (transient despite the 5xx).
    QuotaExceeded,
    /// The account cannot send at all until an admin acts (SMTP AUTH disabled, mailbox full or
    /// blocked, tenant blocked, TLS policy): hold its mail, do not fail it.
    HoldAccount,
    /// Try again later with the retry schedule.
    Transient,
    /// Refused for good (for the recipient at RCPT, for the message elsewhere).
    Permanent,
}

/// One row of the table. Empty `codes` or `enhanced` match any; `mentions` must appear in
/// the reply's text when set.
struct Row {
    codes: &'static [u16],
    enhanced: &'static [&'static str],
    mentions: Option<&'static str>,
    verdict: Verdict,
    advice: Option<&'static str>,
}

const SEND_AS: &str = "the mailbox is not allowed to send as this From address: grant Send As (Add-RecipientPermission) or send from the mailbox's own address";

const TABLE: &[Row] = &[
    Row {
        codes: &[535],
        enhanced: &["5.7.3"],
        mentions: None,
        verdict: Verdict::TokenRejected,
        advice: Some(
            "Exchange refused the token: the access token expired or has the wrong audience (it must be for https://outlook.office365.com, not Microsoft Graph), the mailbox in `mailbox` is not one this app may send as (app-only needs New-ServicePrincipal and Add-MailboxPermission), or the user behind a delegated token is not that mailbox",
        ),
    },
    Row {
        codes: &[535],
        enhanced: &["5.7.139"],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: Some(
            "SMTP AUTH is disabled for this mailbox or tenant (security defaults, a Conditional Access policy, or Set-CASMailbox -SmtpClientAuthenticationDisabled $true): enable it with Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $false",
        ),
    },
    Row {
        codes: &[535],
        enhanced: &[],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: None,
    },
    Row {
        codes: &[550],
        enhanced: &["5.7.30"],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: Some(
            "Basic authentication is disabled: the relay must use XOAUTH2 (check that the account's flow and token are in use)",
        ),
    },
    Row {
        codes: &[452],
        enhanced: &["4.5.3"],
        mentions: None,
        verdict: Verdict::TooManyRecipients,
        advice: Some("too many recipients in one transaction; the relay splits the recipient list"),
    },
    Row {
        codes: &[432, 451],
        enhanced: &["4.3.2"],
        mentions: None,
        verdict: Verdict::Throttled,
        advice: Some(
            "Exchange is throttling concurrent connections or messages for this mailbox; the relay slows down and retries",
        ),
    },
    Row {
        codes: &[],
        enhanced: &["4.7.500", "4.7.501", "4.7.502"],
        mentions: None,
        verdict: Verdict::Throttled,
        advice: Some("Exchange is throttling this sender; the relay slows down and retries"),
    },
    Row {
        codes: &[554],
        enhanced: &["5.2.0"],
        mentions: Some("SubmissionQuotaExceeded"),
        verdict: Verdict::QuotaExceeded,
        advice: Some(
            "the mailbox reached its daily recipient limit (10,000 per rolling 24 h); mail is paused for this mailbox and retried later",
        ),
    },
    Row {
        codes: &[554],
        enhanced: &["5.2.0"],
        mentions: Some("SendAsDenied"),
        verdict: Verdict::Permanent,
        advice: Some(SEND_AS),
    },
    Row {
        codes: &[550],
        enhanced: &["5.7.60"],
        mentions: None,
        verdict: Verdict::Permanent,
        advice: Some(SEND_AS),
    },
    Row {
        codes: &[554],
        enhanced: &["5.2.2"],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: Some(
            "the sending mailbox is full (Sent Items counts against its quota); free space or raise the quota",
        ),
    },
    Row {
        codes: &[550],
        enhanced: &["5.1.8"],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: Some(
            "Exchange has blocked this mailbox from sending (suspected spam source); unblock it in the Microsoft 365 Defender portal (Restricted entities)",
        ),
    },
    Row {
        codes: &[],
        enhanced: &["5.7.705", "5.7.708"],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: Some(
            "Exchange has blocked the tenant or the sending IP address; see the Microsoft 365 admin center",
        ),
    },
    Row {
        codes: &[421, 454],
        enhanced: &["4.7.66"],
        mentions: None,
        verdict: Verdict::HoldAccount,
        advice: Some(
            "TLS 1.0/1.1 is not accepted by Exchange Online; the relay uses TLS 1.2 or later, so a TLS-inspecting proxy in between is downgrading",
        ),
    },
    Row {
        codes: &[530],
        enhanced: &["5.7.57"],
        mentions: None,
        verdict: Verdict::Permanent,
        advice: Some("the upstream requires authentication before MAIL FROM"),
    },
    Row {
        codes: &[504],
        enhanced: &["5.7.4"],
        mentions: None,
        verdict: Verdict::Permanent,
        advice: Some("the upstream does not accept this authentication mechanism before STARTTLS"),
    },
];

impl Row {
    fn matches(&self, reply: &UpstreamReply) -> bool {
        let enhanced = reply.enhanced.as_deref().unwrap_or("");
        (self.codes.is_empty() || self.codes.contains(&reply.code))
            && (self.enhanced.is_empty() || self.enhanced.contains(&enhanced))
            && self
                .mentions
                .is_none_or(|needle| reply.lines.iter().any(|l| l.contains(needle)))
    }
}

fn row(reply: &UpstreamReply) -> Option<&'static Row> {
    TABLE.iter().find(|row| row.matches(reply))
}

pub fn classify(reply: &UpstreamReply) -> Verdict {
    if (200..400).contains(&reply.code) {
        return Verdict::Accepted;
    }
    match row(reply) {
        Some(row) => row.verdict,
        None if (400..500).contains(&reply.code) => Verdict::Transient,
        None => Verdict::Permanent,
    }
}

/// What an admin can do about `reply`, for replies that need explaining.
pub fn advice(reply: &UpstreamReply) -> Option<&'static str> {
    row(reply).and_then(|row| row.advice)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> UpstreamReply {
        UpstreamReply::new(code, text)
    }

    #[test]
    fn the_exchange_table() {
        for (code, text, verdict) in [
            (250, "2.1.5 Recipient OK", Verdict::Accepted),
            (
                535,
                "5.7.3 Authentication unsuccessful",
                Verdict::TokenRejected,
            ),
            (
                535,
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled",
                Verdict::HoldAccount,
            ),
            (
                535,
                "5.7.8 Error: authentication failed",
                Verdict::HoldAccount,
            ),
            (
                421,
                "4.7.66 TLS 1.0 and 1.1 are not supported",
                Verdict::HoldAccount,
            ),
            (
                432,
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                Verdict::Throttled,
            ),
            (451, "4.3.2 Temporary server error", Verdict::Throttled),
            (450, "4.7.500 Server busy", Verdict::Throttled),
            (
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Verdict::QuotaExceeded,
            ),
            (
                554,
                "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
                Verdict::Permanent,
            ),
            (
                550,
                "5.7.60 SMTP; Client does not have permissions to send as this sender",
                Verdict::Permanent,
            ),
            (
                554,
                "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException",
                Verdict::HoldAccount,
            ),
            (452, "4.5.3 Too many recipients", Verdict::TooManyRecipients),
            (
                550,
                "5.1.8 Access denied, bad outbound sender",
                Verdict::HoldAccount,
            ),
            (
                550,
                "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP",
                Verdict::HoldAccount,
            ),
            (421, "4.4.2 Connection dropped", Verdict::Transient),
            (
                550,
                "5.1.10 RESOLVER.ADR.RecipientNotFound",
                Verdict::Permanent,
            ),
        ] {
            assert_eq!(classify(&reply(code, text)), verdict, "{code} {text}");
        }
    }

    #[test]
    fn exchange_replies_are_explained() {
        let advised = |code, text| advice(&reply(code, text)).unwrap();
        assert!(
            advised(535, "5.7.3 Authentication unsuccessful [SN4PR0601CA0001]")
                .contains("wrong audience")
        );
        assert!(advised(535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.").contains("Set-CASMailbox"));
        assert!(
            advised(
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
            )
            .contains("daily recipient limit")
        );
        assert!(advised(554, "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied").contains("Send As"));
        assert_eq!(advice(&reply(250, "2.0.0 OK")), None);
        assert_eq!(
            advice(&reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound")),
            None
        );
    }

    /// A reply each row of the table matches first, with the row's advice.
    pub(in crate::delivery::meaning) fn each_row() -> Vec<(UpstreamReply, Option<&'static str>)> {
        TABLE
            .iter()
            .map(|row| {
                let code = row.codes.first().copied().unwrap_or(550);
                let enhanced = row.enhanced.first().copied().unwrap_or("5.9.9");
                let text = format!("{enhanced} {}", row.mentions.unwrap_or("x"));
                (reply(code, &text), row.advice)
            })
            .collect()
    }

    #[test]
    fn every_row_can_be_reached() {
        // A row shadowed by an earlier, wider one would never classify or advise anything.
        for (i, (reply, _)) in each_row().iter().enumerate() {
            let first = TABLE.iter().position(|r| r.matches(reply));
            assert_eq!(first, Some(i), "row {i} is shadowed");
        }
    }
}
