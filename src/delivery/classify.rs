//! What an upstream reply means for the queue (the table in `exchange-online.md`).

use super::reply::UpstreamReply;

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

pub fn classify(reply: &UpstreamReply) -> Verdict {
    let enhanced = reply.enhanced.as_deref().unwrap_or("");
    let text = reply.text();
    match (reply.code, enhanced) {
        (200..=399, _) => Verdict::Accepted,
        (535, "5.7.3") => Verdict::TokenRejected,
        (535, _) | (550, "5.7.30") => Verdict::HoldAccount,
        (452, "4.5.3") => Verdict::TooManyRecipients,
        (432 | 451, "4.3.2") | (_, "4.7.500" | "4.7.501" | "4.7.502") => Verdict::Throttled,
        (554, "5.2.0") if text.contains("SubmissionQuotaExceeded") => Verdict::QuotaExceeded,
        (554, "5.2.2") | (550, "5.1.8") | (_, "5.7.705" | "5.7.708") => Verdict::HoldAccount,
        (421 | 454, "4.7.66") => Verdict::HoldAccount,
        (400..=499, _) => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

#[cfg(test)]
mod tests {
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
}
