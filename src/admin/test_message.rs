//! A test message an operator sends from the console through a chosen account: queued like
//! any message (on disk, then to the scheduler through the spool's arrivals), from the
//! account's mailbox, and routed to that account whatever its `senders` say
//! (`Envelope::account`). It proves the whole path: the queue, the token, the upstream.

use crate::config::{AccountConfig, Config, Mailbox};
use crate::queue::{ClientInfo, Envelope, QueueId, Spool};

/// Queues the test message to `to` through `account`, sent by the signed-in `user`.
/// `to` must already be a checked address (`smtp::command::recipient_address`).
pub async fn queue(
    spool: &std::sync::Arc<Spool>,
    config: &Config,
    account: &AccountConfig,
    to: &str,
    user: &str,
) -> std::io::Result<QueueId> {
    let hostname = &config.server.hostname;
    // A `{sender}` account sends as each user: the operator who asked is the one to try.
    let from = match &account.mailbox {
        Mailbox::Fixed(mailbox) => mailbox.clone(),
        Mailbox::Sender => crate::smtp::command::recipient_address(user)
            .map_err(|why| std::io::Error::other(format!("{user} cannot be the sender: {why}")))?,
    };
    let id = QueueId::generate();
    let envelope = Envelope {
        id,
        received_at: crate::clock::unix_ms(),
        sender: from.clone(),
        recipients: vec![to.to_owned()],
        smtputf8: !(to.is_ascii() && from.is_ascii()),
        eight_bit: true,
        client: ClientInfo {
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            helo: hostname.clone(),
            user: Some(user.to_owned()),
            tls: false,
        },
        is_dsn: false,
        account: Some(account.name.clone()),
    };
    let now = chrono::Utc::now();
    // The ID token's word, so only printable characters reach the text.
    let user: String = user.chars().filter(|c| !c.is_control()).collect();
    let content = format!(
        "From: smtprelay on {hostname} <{from}>\r\nTo: <{to}>\r\n\
         Subject: smtprelay test message through account {account}\r\n\
         Date: {date}\r\nMessage-ID: <{id}@{hostname}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message from smtprelay on {hostname}, sent through the account\r\n\
         {account} at {date} at the request of {user} (the admin console).\r\n\
         Queue ID: {id}\r\n",
        account = account.name,
        date = now.to_rfc2822(),
    );
    let mut writer = spool.create(envelope);
    writer.write(content.as_bytes()).await?;
    writer.commit().await
}
