//! What Microsoft Graph's answers mean: one table ([`ROWS`]) that says, for each HTTP status
//! and error code, what the queue does and what an admin can do about it, as
//! `exchange-online.md` lays down. Each answer is recorded as an SMTP-shaped reply typed as
//! Graph's, so DSNs, `queue show` and the logs read it like Exchange's.

use crate::queue::reply::{GraphAnswer, UpstreamReply};

/// What the queue does with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Accepted for every recipient.
    Delivered,
    /// The token was refused: try a fresh one once, then hold like 535 5.7.3.
    RefreshToken,
    /// Pause the mailbox for `Retry-After`.
    Throttled,
    /// The account cannot send until an admin acts: hold its mail.
    HoldAccount,
    /// This message can never go: fail its recipients (DSN).
    FailMessage,
    /// Try again on the retry schedule (the message may have been sent: Graph sometimes
    /// answers 5xx after accepting).
    Retry,
}

/// One row: empty `statuses` or `codes` match any. The SMTP-shaped `code` and `enhanced` are
/// what the delivery state, DSNs and logs record for the answer.
struct Row {
    statuses: &'static [u16],
    codes: &'static [&'static str],
    action: Action,
    code: u16,
    enhanced: &'static str,
    advice: Option<&'static str>,
}

const ROWS: &[Row] = &[
    Row {
        statuses: &[202],
        codes: &[],
        action: Action::Delivered,
        code: 250,
        enhanced: "2.0.0",
        advice: None,
    },
    Row {
        statuses: &[401],
        codes: &[],
        action: Action::RefreshToken,
        code: 535,
        enhanced: "5.7.3",
        advice: Some(
            "Graph refused the token: it expired, or it is not for https://graph.microsoft.com (an Outlook/SMTP token is refused; check `scope`)",
        ),
    },
    Row {
        statuses: &[429, 503, 504],
        codes: &[],
        action: Action::Throttled,
        code: 451,
        enhanced: "4.7.500",
        advice: Some(
            "Graph is throttling this app or mailbox (4 concurrent requests, 10,000 per 10 minutes); the relay waits as long as Graph asks",
        ),
    },
    Row {
        statuses: &[],
        codes: &["ErrorSendAsDenied"],
        action: Action::FailMessage,
        code: 550,
        enhanced: "5.7.60",
        advice: Some(
            "the mailbox is not allowed to send as this From address: grant Send As (Add-RecipientPermission) or send from the mailbox's own address",
        ),
    },
    Row {
        statuses: &[],
        codes: &["ErrorQuotaExceeded"],
        action: Action::HoldAccount,
        code: 554,
        enhanced: "5.2.2",
        advice: Some(
            "the sending mailbox is full (Sent Items counts against its quota); free space or raise the quota",
        ),
    },
    Row {
        statuses: &[403, 404],
        codes: &["MailboxNotEnabledForRESTAPI", "ErrorInvalidUser"],
        action: Action::HoldAccount,
        code: 550,
        enhanced: "5.7.1",
        advice: Some(
            "the mailbox cannot send through Graph: it is unlicensed, on-premises, or does not exist (check `mailbox`)",
        ),
    },
    Row {
        statuses: &[403],
        codes: &[],
        action: Action::HoldAccount,
        code: 550,
        enhanced: "5.7.1",
        advice: Some(
            "the app may not send as this mailbox: grant the Mail.Send permission (application, with admin consent; or delegated for a signed-in user) and check that no application access policy excludes the mailbox",
        ),
    },
    Row {
        statuses: &[400],
        codes: &["ErrorInvalidRecipients"],
        action: Action::FailMessage,
        code: 550,
        enhanced: "5.1.3",
        advice: None,
    },
    Row {
        statuses: &[400],
        codes: &[],
        action: Action::FailMessage,
        code: 554,
        enhanced: "5.6.0",
        advice: Some("Graph refused the message as malformed"),
    },
    Row {
        statuses: &[413],
        codes: &[],
        action: Action::FailMessage,
        code: 552,
        enhanced: "5.3.4",
        advice: Some(
            "Graph refused the request as too large (Exchange's message size limit, 35 MB by default, up to 150 MB)",
        ),
    },
];

/// Any answer no row names: retried, as a server error would be.
const OTHER: Row = Row {
    statuses: &[],
    codes: &[],
    action: Action::Retry,
    code: 451,
    enhanced: "4.3.0",
    advice: None,
};

fn row(status: u16, code: &str) -> &'static Row {
    ROWS.iter()
        .find(|row| {
            (row.statuses.is_empty() || row.statuses.contains(&status))
                && (row.codes.is_empty() || row.codes.contains(&code))
        })
        .unwrap_or(&OTHER)
}

/// What Graph's answer means: what the queue does, and the reply it records
/// (`451 4.7.500 Graph 429 TooManyRequests: …`, without advice: that is added where it is shown).
pub fn read(status: u16, code: &str, message: &str) -> (Action, UpstreamReply) {
    let row = row(status, code);
    let mut text = format!("{} Graph {status}", row.enhanced);
    if !code.is_empty() {
        text.push_str(&format!(" {code}"));
    }
    let message = crate::logging::Untrusted(message.trim()).to_string();
    if !message.is_empty() {
        text.push_str(&format!(": {message}"));
    }
    let mut reply = UpstreamReply::new(row.code, &text);
    reply.graph = Some(GraphAnswer {
        status,
        code: code.to_owned(),
    });
    (row.action, reply)
}

/// What an admin can do about a recorded Graph answer, for answers that need explaining.
pub fn advice(answer: &GraphAnswer) -> Option<&'static str> {
    row(answer.status, &answer.code).advice
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::delivery::meaning::Explain;

    #[test]
    fn the_graph_table() {
        for (status, code, action) in [
            (202, "", Action::Delivered),
            (401, "InvalidAuthenticationToken", Action::RefreshToken),
            (429, "ApplicationThrottled", Action::Throttled),
            (503, "", Action::Throttled),
            (504, "", Action::Throttled),
            (403, "ErrorAccessDenied", Action::HoldAccount),
            (403, "MailboxNotEnabledForRESTAPI", Action::HoldAccount),
            (404, "ErrorInvalidUser", Action::HoldAccount),
            (403, "ErrorSendAsDenied", Action::FailMessage),
            (400, "ErrorInvalidRecipients", Action::FailMessage),
            (
                400,
                "ErrorMimeContentInvalidBase64String",
                Action::FailMessage,
            ),
            (413, "ErrorRequestEntityTooLarge", Action::FailMessage),
            (507, "ErrorQuotaExceeded", Action::HoldAccount),
            (500, "ErrorInternalServerError", Action::Retry),
            (404, "ResourceNotFound", Action::Retry),
        ] {
            assert_eq!(read(status, code, "").0, action, "{status} {code}");
        }
    }

    /// For each row, an answer it reads first, with the row's advice.
    pub(in crate::delivery::meaning) fn each_row() -> Vec<(u16, &'static str, Option<&'static str>)>
    {
        ROWS.iter()
            .chain([&OTHER])
            .filter_map(|r| {
                let status = r.statuses.first().copied().unwrap_or(500);
                let code = r.codes.first().copied().unwrap_or("");
                std::ptr::eq(row(status, code), r).then_some((status, code, r.advice))
            })
            .collect()
    }

    #[test]
    fn answers_are_recorded_with_codes_and_shown_with_their_advice() {
        let (action, reply) = read(403, "ErrorAccessDenied", "m");
        assert_eq!(action, Action::HoldAccount);
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (550, Some("5.7.1"))
        );
        assert_eq!(reply.text(), "5.7.1 Graph 403 ErrorAccessDenied: m");
        assert!(
            reply
                .described()
                .ends_with("ErrorAccessDenied: m (the app may not send as this mailbox: grant the Mail.Send permission (application, with admin consent; or delegated for a signed-in user) and check that no application access policy excludes the mailbox)")
        );
    }
}
