//! Delivery progress of one message, kept beside its (immutable) message file as
//! `queue/<id>.state` and replaced atomically after every attempt, so a restart never resends
//! to a recipient that already has the message.

use serde::{Deserialize, Serialize};

use super::message_file::Envelope;
use super::reply::UpstreamReply;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not yet delivered; tried again at `next_attempt_ms`.
    Pending,
    Delivered,
    /// Refused for good; a DSN reports it (unless the sender is null).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    /// The upstream's last reply about this recipient.
    #[serde(default)]
    pub reply: Option<UpstreamReply>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    #[serde(default)]
    pub attempts: u32,
    /// Milliseconds since the Unix epoch; 0 means "now".
    #[serde(default)]
    pub next_attempt_ms: u64,
    pub recipients: Vec<RecipientState>,
    /// Why the last attempt did not finish the message, in plain words.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Held by an admin (`queue hold`): not delivered until released.
    #[serde(default)]
    pub held: bool,
    /// A DSN has been queued for the failed recipients.
    #[serde(default)]
    pub bounced: bool,
    /// The Graph draft made for this message, recorded before it is sent: after an
    /// ambiguous failure the next attempt asks Graph whether it still exists instead of
    /// sending again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_draft: Option<String>,
}

impl DeliveryState {
    pub fn new(envelope: &Envelope) -> DeliveryState {
        DeliveryState {
            attempts: 0,
            next_attempt_ms: 0,
            recipients: envelope
                .recipients
                .iter()
                .map(|address| RecipientState {
                    address: address.clone(),
                    status: RecipientStatus::Pending,
                    reply: None,
                })
                .collect(),
            last_error: None,
            held: false,
            bounced: false,
            graph_draft: None,
        }
    }

    /// Reads a state file; a missing one means a message nobody has tried yet.
    pub fn read(path: &std::path::Path, envelope: &Envelope) -> std::io::Result<DeliveryState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeliveryState::new(envelope)),
            Err(e) => Err(e),
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
    }

    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }

    pub fn failed(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Failed)
    }

    pub fn set(&mut self, address: &str, status: RecipientStatus, reply: Option<UpstreamReply>) {
        if let Some(recipient) = self
            .recipients
            .iter_mut()
            .find(|r| r.address == address && r.status == RecipientStatus::Pending)
        {
            recipient.status = status;
            if reply.is_some() {
                recipient.reply = reply;
            }
        }
    }

    /// A short word for listings: queued, deferred, held, delivering.
    pub fn label(&self) -> &'static str {
        if self.held {
            "held"
        } else if self.attempts == 0 {
            "queued"
        } else {
            "deferred"
        }
    }
}
