//! What the upstream's answers mean, in one place: Exchange Online's SMTP replies
//! ([`exchange`]) and Microsoft Graph's HTTP answers ([`graph`]), each one table that says
//! what the queue does with an answer and what an admin can do about it.
//!
//! Replies are recorded as plain data (`queue::UpstreamReply`, the state file's format), with
//! no advice in them; [`Explain`] adds the advice once, where a reply is shown (logs, `queue
//! show`, DSNs, the status page), from the table of whoever gave the reply.

pub mod exchange;
pub mod graph;

pub use exchange::{Verdict, classify};

use crate::queue::reply::UpstreamReply;

/// A reply as an admin sees it.
pub trait Explain {
    /// A diagnosis an admin can act on, or `None` for replies that need no explanation: from
    /// Graph's table for Graph's answers, from Exchange's for its SMTP replies.
    fn diagnosis(&self) -> Option<&'static str>;

    /// The reply with its diagnosis, if it has one.
    fn described(&self) -> String;
}

impl Explain for UpstreamReply {
    fn diagnosis(&self) -> Option<&'static str> {
        match &self.graph {
            Some(answer) => graph::advice(answer),
            None => exchange::advice(self),
        }
    }

    fn described(&self) -> String {
        match self.diagnosis() {
            Some(diagnosis) => format!("{self} ({diagnosis})"),
            None => self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22: Graph's answers were explained twice (Graph's advice in the recorded text,
    /// then Exchange's for the same SMTP code). Every row of both tables, recorded and read
    /// back from a state, is shown with its own table's advice, once.
    #[test]
    fn every_reply_of_both_tables_is_shown_with_its_advice_once() {
        let graph = graph::tests::each_row()
            .into_iter()
            .map(|(status, code, advice)| (graph::read(status, code, "m").1, advice));
        for (reply, advice) in exchange::tests::each_row().into_iter().chain(graph) {
            let stored: UpstreamReply =
                serde_json::from_value(serde_json::to_value(&reply).unwrap()).unwrap();
            assert_eq!(stored, reply);
            let shown = stored.described();
            match advice {
                Some(advice) => {
                    assert!(
                        !reply.text().contains(advice),
                        "recorded with advice: {reply}"
                    );
                    assert_eq!(shown, format!("{reply} ({advice})"));
                    assert_eq!(shown.matches(advice).count(), 1, "{shown}");
                }
                None => assert_eq!(shown, reply.to_string()),
            }
        }
    }
}
