//! `smtprelay queue …`: reads the spool directly, so it works with or without the daemon.

use super::output::{errln, outln};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::queue::{DeliveryState, SpoolPaths};

#[derive(Serialize)]
struct Row {
    id: String,
    received_at: u64,
    age_seconds: u64,
    sender: String,
    recipients: Vec<String>,
    size: u64,
    state: &'static str,
    attempts: u32,
    /// Recipients still to be delivered.
    pending: Vec<String>,
    last_error: Option<String>,
}

pub fn list(config: &Config, json: bool) -> Result<ExitCode, ExitCode> {
    let paths = SpoolPaths::new(config.spool_dir());
    let scan = paths.scan().map_err(|e| {
        errln!("error: cannot read {}: {e}", paths.queue().display());
        ExitCode::FAILURE
    })?;
    let now_ms = crate::clock::unix_ms();
    let rows: Vec<Row> = scan
        .messages
        .iter()
        .map(|(_, file)| {
            // A message finished meanwhile has no state file and reads as new: harmless here.
            let state = paths
                .read_state(&file.envelope)
                .unwrap_or_else(|_| DeliveryState::new(&file.envelope));
            Row {
                id: file.envelope.id.to_string(),
                received_at: file.envelope.received_at,
                age_seconds: now_ms.saturating_sub(file.envelope.received_at) / 1000,
                sender: file.envelope.sender.clone(),
                recipients: file.envelope.recipients.clone(),
                size: file.content_len,
                state: state.label(),
                attempts: state.attempts,
                pending: state.pending().map(|r| r.address.clone()).collect(),
                last_error: state.last_error.clone(),
            }
        })
        .collect();
    for (path, problem) in &scan.damaged {
        errln!("warning: {}: {problem}", path.display());
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialise")
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!("Queue is empty.");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<26}  {:>8}  {:>10}  {:<8}  SENDER / RECIPIENTS",
        "ID",
        "AGE",
        "SIZE",
        "STATE"
    );
    for row in &rows {
        let sender = if row.sender.is_empty() {
            "<>"
        } else {
            &row.sender
        };
        outln!(
            "{:<26}  {:>8}  {:>10}  {:<8}  {}",
            row.id,
            format_age(Duration::from_secs(row.age_seconds)),
            row.size,
            row.state,
            sender
        );
        for recipient in &row.recipients {
            let done = if row.pending.contains(recipient) {
                ""
            } else {
                " (done)"
            };
            outln!("{:60}  -> {recipient}{done}", "");
        }
        if let Some(error) = &row.last_error {
            outln!("{:60}  last error: {error}", "");
        }
    }
    let total: u64 = rows.iter().map(|r| r.size).sum();
    outln!("-- {} message(s), {total} bytes", rows.len());
    Ok(ExitCode::SUCCESS)
}

fn format_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `queue show ID`: everything known about one message, from the queue or from failed/.
pub fn show(config: &Config, id: &str, json: bool) -> Result<ExitCode, ExitCode> {
    let id: crate::queue::QueueId = id.parse().map_err(|e| {
        errln!("error: {e}");
        ExitCode::FAILURE
    })?;
    let paths = SpoolPaths::new(config.spool_dir());
    let (path, place) = [
        (paths.message(id), "queue"),
        (paths.failed().join(format!("{id}.msg")), "failed"),
    ]
    .into_iter()
    .find(|(p, _)| p.exists())
    .ok_or_else(|| {
        errln!(
            "error: no message {id} in {} (delivered, deleted, or never queued)",
            paths.root.display()
        );
        ExitCode::FAILURE
    })?;
    let file = crate::queue::MessageFile::open(&path).map_err(|e| {
        errln!("error: {}: {e}", path.display());
        ExitCode::FAILURE
    })?;
    let state = DeliveryState::read(&path.with_extension("state"), &file.envelope)
        .unwrap_or_else(|_| DeliveryState::new(&file.envelope));
    if json {
        let value = serde_json::json!({
            "id": id.to_string(),
            "place": place,
            "envelope": file.envelope,
            "size": file.content_len,
            "state": state,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let envelope = &file.envelope;
    let now_ms = crate::clock::unix_ms();
    outln!("id:          {id} ({place})");
    outln!(
        "received:    {} ago from [{}] (HELO {}{})",
        format_age(Duration::from_millis(
            now_ms.saturating_sub(envelope.received_at)
        )),
        envelope.client.address,
        envelope.client.helo,
        envelope
            .client
            .user
            .as_ref()
            .map(|u| format!(", user {u}"))
            .unwrap_or_default()
    );
    outln!("sender:      <{}>", envelope.sender);
    outln!("size:        {} bytes", file.content_len);
    outln!(
        "state:       {}, {} attempt(s)",
        state.label(),
        state.attempts
    );
    if let Some(error) = &state.last_error {
        outln!("last error:  {error}");
    }
    for recipient in &state.recipients {
        let status = match recipient.status {
            crate::queue::RecipientStatus::Pending => "pending",
            crate::queue::RecipientStatus::Delivered => "delivered",
            crate::queue::RecipientStatus::Failed => "failed",
        };
        outln!("  {:<10} <{}>", status, recipient.address);
        if let Some(reply) = &recipient.reply {
            outln!("             {reply}");
            if let Some(diagnosis) = reply.diagnosis() {
                outln!("             ({diagnosis})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Queue commands that change things go through the running daemon's control socket.
pub fn control(config: &Config, command: super::QueueCommand) -> Result<ExitCode, ExitCode> {
    use crate::delivery::scheduler::Control;
    let parse = |id: &str| {
        id.parse::<crate::queue::QueueId>().map_err(|e| {
            errln!("error: {e}");
            ExitCode::FAILURE
        })
    };
    let request = match command {
        super::QueueCommand::Flush => Control::Flush,
        super::QueueCommand::Retry { failed: true, .. } => Control::RetryFailed,
        super::QueueCommand::Retry { id: Some(id), .. } => Control::Retry(parse(&id)?),
        super::QueueCommand::Retry { id: None, .. } => {
            errln!("error: name a queue ID, or use --failed");
            return Err(ExitCode::FAILURE);
        }
        super::QueueCommand::Hold { id } => Control::Hold(parse(&id)?),
        super::QueueCommand::Release { id } => Control::Release(parse(&id)?),
        super::QueueCommand::Delete { id } => Control::Delete(parse(&id)?),
        super::QueueCommand::List { .. } | super::QueueCommand::Show { .. } => {
            unreachable!("read-only commands are handled directly")
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| ExitCode::FAILURE)?;
    match runtime.block_on(crate::admin::control::request(
        &config.server.state_dir,
        &request,
    )) {
        Ok(message) => {
            outln!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            errln!("error: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}
