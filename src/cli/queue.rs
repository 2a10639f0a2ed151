//! `smtprelay queue …`: reads the spool directly, so it works with or without the daemon; a
//! running daemon also says what each message waits for (its scheduler's view).

use super::output::{errln, outln};
use crate::delivery::meaning::Explain;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::config::values::{AddressGlob, parse_duration};
use crate::delivery::Control;
use crate::delivery::Standing;
use crate::queue::{DeliveryState, QueueId, SpoolPaths};

#[derive(Serialize)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) received_at: u64,
    pub(crate) age_seconds: u64,
    pub(crate) sender: String,
    pub(crate) recipients: Vec<String>,
    pub(crate) size: u64,
    pub(crate) state: &'static str,
    pub(crate) attempts: u32,
    /// Recipients still to be delivered.
    pub(crate) pending: Vec<String>,
    pub(crate) last_error: Option<String>,
    /// The account it goes through.
    pub(crate) account: Option<String>,
    /// When it is tried next (Unix seconds); absent when due now or held.
    pub(crate) next_attempt_at: Option<u64>,
    /// Why it waits, in words.
    pub(crate) waiting: String,
    /// What the running relay's scheduler says it waits for; absent when no relay runs.
    #[serde(flatten)]
    pub(crate) standing: Option<Standing>,
    pub(crate) subject: Option<String>,
}

/// Why a queued message is not gone yet: what the running relay's scheduler says it waits
/// for (`standing`), or, with no relay running, what its state file last recorded.
fn why_waiting(state: &DeliveryState, standing: Option<&Standing>, now_ms: u64) -> String {
    let last = state.last_error.as_deref();
    let deferred = || {
        let at = crate::clock::rfc3339(state.next_attempt_ms / 1000);
        match last {
            Some(error) => format!("deferred until {at}: {error}"),
            None => format!("deferred until {at}"),
        }
    };
    let due = || match (state.attempts, last) {
        (0, _) => "due: waiting for its first attempt".to_owned(),
        (_, Some(error)) => format!("due: waiting for a connection (last attempt: {error})"),
        (_, None) => "due: waiting for a connection".to_owned(),
    };
    match standing {
        Some(Standing::Held) => "held by an admin (smtprelay queue release)".to_owned(),
        Some(Standing::InFlight) => "being delivered now".to_owned(),
        Some(Standing::Deferred) => deferred(),
        Some(Standing::Due) => due(),
        Some(Standing::WaitingForToken) => format!(
            "waiting for a token: {}",
            last.unwrap_or("the account has no usable token")
        ),
        Some(Standing::WaitingForBudget(why)) => format!("waiting for its mailbox's budget: {why}"),
        Some(Standing::Paused(why)) => format!("its mailbox is paused: {why}"),
        None if state.held => "held by an admin (smtprelay queue release)".to_owned(),
        None if state.next_attempt_ms > now_ms => deferred(),
        None => match last {
            Some(error) => format!("due; last recorded: {error}"),
            None => due(),
        },
    }
}

/// A short name for the STATE column.
fn state_label(state: &DeliveryState, standing: Option<&Standing>) -> &'static str {
    match standing {
        Some(Standing::Due) => "due",
        Some(Standing::Deferred) => "deferred",
        Some(Standing::WaitingForToken) => "no token",
        Some(Standing::WaitingForBudget(_)) => "budget",
        Some(Standing::Paused(_)) => "paused",
        Some(Standing::InFlight) => "sending",
        Some(Standing::Held) => "held",
        None => state.label(),
    }
}

/// How long `queue list` and `queue show` wait for the running relay's view.
const STANDINGS_WAIT: Duration = Duration::from_secs(3);

/// What the running relay says each message waits for; `None` when no relay runs here (or
/// one too old to say), and the list then shows what the state files last recorded.
fn live_standings(config: &Config) -> Option<HashMap<QueueId, Standing>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    // A relay too busy to answer soon must not hold the list up.
    let asked = crate::admin::control::request(&config.server.state_dir, &Control::Standings);
    let answer = runtime
        .block_on(async { tokio::time::timeout(STANDINGS_WAIT, asked).await })
        .ok()?
        .ok()?;
    let standings: Vec<(QueueId, Standing)> = serde_json::from_str(&answer).ok()?;
    Some(standings.into_iter().collect())
}

/// The Subject header, read from the content's start.
fn subject(file: &crate::queue::MessageFile, path: &std::path::Path) -> Option<String> {
    let head = file
        .read_head(path, crate::delivery::agent::transport::headers::HEAD)
        .ok()?;
    mail_parser::MessageParser::default()
        .parse_headers(&head)?
        .subject()
        .map(str::to_owned)
}

fn row(
    config: &Config,
    path: &std::path::Path,
    file: &crate::queue::MessageFile,
    state: &DeliveryState,
    standing: Option<&Standing>,
    now_ms: u64,
) -> Row {
    let envelope = &file.envelope;
    let account = (!config.accounts.is_empty()).then(|| {
        let index = crate::delivery::account_for(&config.accounts, envelope);
        config.accounts[index].name.clone()
    });
    Row {
        id: envelope.id.to_string(),
        received_at: envelope.received_at,
        age_seconds: now_ms.saturating_sub(envelope.received_at) / 1000,
        sender: envelope.sender.clone(),
        recipients: envelope.recipients.clone(),
        size: file.content_len,
        state: state_label(state, standing),
        attempts: state.attempts,
        pending: state.pending().map(|r| r.address.clone()).collect(),
        last_error: state.last_error.clone(),
        account,
        next_attempt_at: (!state.held && state.next_attempt_ms > now_ms)
            .then_some(state.next_attempt_ms / 1000),
        waiting: why_waiting(state, standing, now_ms),
        standing: standing.cloned(),
        subject: subject(file, path),
    }
}

/// `queue list`'s rows for what a scan found (the status page shows the same).
pub(crate) fn rows(
    config: &Config,
    paths: &SpoolPaths,
    scan: &crate::queue::spool::ScanResult,
    standings: Option<&HashMap<QueueId, Standing>>,
) -> Vec<Row> {
    let now_ms = crate::clock::unix_ms();
    scan.messages
        .iter()
        .map(|(path, file)| {
            // A message finished meanwhile has no state file and reads as new: harmless here.
            let state = paths
                .read_state(&file.envelope)
                .unwrap_or_else(|_| DeliveryState::new(&file.envelope));
            let standing = standings.and_then(|s| s.get(&file.envelope.id));
            row(config, path, file, &state, standing, now_ms)
        })
        .collect()
}

pub fn list(config: &Config, json: bool) -> Result<ExitCode, ExitCode> {
    let paths = SpoolPaths::new(config.spool_dir());
    let scan = paths.scan().map_err(|e| {
        errln!("error: cannot read {}: {e}", paths.queue().display());
        ExitCode::FAILURE
    })?;
    let standings = live_standings(config);
    let rows = rows(config, &paths, &scan, standings.as_ref());
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
            "{:<26}  {:>8}  {:>10}  {:<8}  {}{}",
            row.id,
            format_age(Duration::from_secs(row.age_seconds)),
            row.size,
            row.state,
            crate::logging::Untrusted(sender),
            row.account
                .as_ref()
                .map_or(String::new(), |a| format!("  (account {a})"))
        );
        if let Some(subject) = &row.subject {
            outln!("{:60}  subject: {}", "", crate::logging::Untrusted(subject));
        }
        for recipient in &row.recipients {
            let done = if row.pending.contains(recipient) {
                ""
            } else {
                " (done)"
            };
            outln!(
                "{:60}  -> {}{done}",
                "",
                crate::logging::Untrusted(recipient)
            );
        }
        outln!("{:60}  {}", "", row.waiting);
    }
    let total: u64 = rows.iter().map(|r| r.size).sum();
    outln!("-- {} message(s), {total} bytes", rows.len());
    if standings.is_none() {
        outln!("-- smtprelay is not running here: each message's state as last recorded");
    }
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
    let standing = live_standings(config).and_then(|mut s| s.remove(&id));
    let now_ms = crate::clock::unix_ms();
    let mut summary = row(config, &path, &file, &state, standing.as_ref(), now_ms);
    if place == "failed" {
        summary.waiting = "failed: kept in failed/ (smtprelay queue retry --failed)".to_owned();
        summary.next_attempt_at = None;
    }
    if json {
        let value = serde_json::json!({
            "id": id.to_string(),
            "place": place,
            "envelope": file.envelope,
            "size": file.content_len,
            "state": state,
            "account": summary.account,
            "subject": summary.subject,
            "next_attempt_at": summary.next_attempt_at,
            "waiting": summary.waiting,
            "standing": summary.standing,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let envelope = &file.envelope;
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
    outln!(
        "sender:      <{}>",
        crate::logging::Untrusted(&envelope.sender)
    );
    if let Some(subject) = &summary.subject {
        outln!("subject:     {}", crate::logging::Untrusted(subject));
    }
    outln!("size:        {} bytes", file.content_len);
    if let Some(account) = &summary.account {
        outln!("account:     {account}");
    }
    outln!(
        "state:       {}, {} attempt(s)",
        summary.state,
        state.attempts
    );
    outln!("waiting:     {}", summary.waiting);
    if let Some(at) = summary.next_attempt_at {
        outln!(
            "next try:    {} (in {})",
            crate::clock::rfc3339(at),
            format_age(Duration::from_secs(at.saturating_sub(now_ms / 1000)))
        );
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

/// Which messages a command applies to: the IDs named, and/or those a filter selects
/// (filters combine: a message must pass all of them).
#[derive(clap::Args, Debug, Default)]
pub struct Selection {
    /// Queue IDs.
    ids: Vec<String>,
    /// Every message in the queue.
    #[arg(long)]
    all: bool,
    /// Messages whose sender matches GLOB (`*@contoso.com`; `<>` for reports).
    #[arg(long, value_name = "GLOB")]
    from: Option<String>,
    /// Messages with a recipient matching GLOB.
    #[arg(long, value_name = "GLOB")]
    to: Option<String>,
    /// Messages received longer ago than AGE (`30m`, `2h`, `3d`).
    #[arg(long, value_name = "AGE")]
    older_than: Option<String>,
}

/// The filters of a selection, parsed.
struct Filters {
    from: Option<AddressGlob>,
    to: Option<AddressGlob>,
    older_than: Option<Duration>,
}

impl Filters {
    fn parse(select: &Selection) -> Result<Filters, String> {
        let glob = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| AddressGlob::new(t).map_err(|e| format!("--{flag}: {e}")))
                .transpose()
        };
        Ok(Filters {
            from: glob("from", &select.from)?,
            to: glob("to", &select.to)?,
            older_than: select
                .older_than
                .as_deref()
                .map(|t| parse_duration(t).map_err(|e| format!("--older-than: {e}")))
                .transpose()?,
        })
    }

    fn matches(&self, envelope: &crate::queue::Envelope, now_ms: u64) -> bool {
        let sender = if envelope.sender.is_empty() {
            "<>"
        } else {
            &envelope.sender
        };
        self.from.as_ref().is_none_or(|g| g.matches(sender))
            && self
                .to
                .as_ref()
                .is_none_or(|g| envelope.recipients.iter().any(|r| g.matches(r)))
            && self.older_than.is_none_or(|age| {
                now_ms.saturating_sub(envelope.received_at) > age.as_millis() as u64
            })
    }
}

/// What a bulk command does to one message, and which messages it concerns.
#[derive(Clone, Copy)]
enum Action {
    Retry,
    Hold,
    Release,
    Delete,
}

impl Action {
    fn control(self, id: QueueId) -> Control {
        match self {
            Action::Retry => Control::Retry(id),
            Action::Hold => Control::Hold(id),
            Action::Release => Control::Release(id),
            Action::Delete => Control::Delete(id),
        }
    }

    /// Selected by a filter, a message the command cannot apply to is left out (IDs named
    /// one by one are always sent, so the daemon says why not).
    fn applies(self, held: bool) -> bool {
        match self {
            Action::Retry | Action::Hold => !held,
            Action::Release => held,
            Action::Delete => true,
        }
    }
}

/// The IDs a selection names, in queue order.
fn select(config: &Config, select: &Selection, action: Action) -> Result<Vec<QueueId>, String> {
    let mut ids = Vec::new();
    for id in &select.ids {
        ids.push(id.parse::<QueueId>().map_err(|e| format!("{id}: {e}"))?);
    }
    let filtered =
        select.all || select.from.is_some() || select.to.is_some() || select.older_than.is_some();
    if !filtered {
        if ids.is_empty() {
            return Err(
                "name queue IDs, or select messages with --all, --from, --to or --older-than"
                    .into(),
            );
        }
        return Ok(ids);
    }
    let filters = Filters::parse(select)?;
    let paths = SpoolPaths::new(config.spool_dir());
    let scan = paths
        .scan()
        .map_err(|e| format!("cannot read {}: {e}", paths.queue().display()))?;
    let now_ms = crate::clock::unix_ms();
    Ok(scan
        .messages
        .iter()
        .map(|(_, file)| file)
        .filter(|file| ids.is_empty() || ids.contains(&file.envelope.id))
        .filter(|file| filters.matches(&file.envelope, now_ms))
        .filter(|file| {
            let held = paths
                .read_state(&file.envelope)
                .is_ok_and(|state| state.held);
            action.applies(held)
        })
        .map(|file| file.envelope.id)
        .collect())
}

/// The commands `smtprelay queue ACTION --from … --to … --older-than …` would send (the
/// status page's selection form): the same filters, the same messages left out.
pub(crate) fn selected_commands(
    config: &Config,
    action: &str,
    from: Option<String>,
    to: Option<String>,
    older_than: Option<String>,
) -> Result<Vec<Control>, String> {
    let action = match action {
        "retry" => Action::Retry,
        "hold" => Action::Hold,
        "release" => Action::Release,
        "delete" => Action::Delete,
        other => return Err(format!("unknown action {other:?}")),
    };
    if from.is_none() && to.is_none() && older_than.is_none() {
        return Err("choose a sender, a recipient or an age".into());
    }
    let selection = Selection {
        ids: Vec::new(),
        all: false,
        from,
        to,
        older_than,
    };
    Ok(select(config, &selection, action)?
        .into_iter()
        .map(|id| action.control(id))
        .collect())
}

/// Queue commands that change things go through the running daemon's control socket.
pub fn control(config: &Config, command: super::QueueCommand) -> Result<ExitCode, ExitCode> {
    use super::QueueCommand;
    let (selection, action) = match command {
        QueueCommand::Flush => return send(config, &[Control::Flush]),
        QueueCommand::Retry { failed: true, .. } => return send(config, &[Control::RetryFailed]),
        QueueCommand::Retry { select, .. } => (select, Action::Retry),
        QueueCommand::Hold { select } => (select, Action::Hold),
        QueueCommand::Release { select } => (select, Action::Release),
        QueueCommand::Delete { select } => (select, Action::Delete),
        QueueCommand::List { .. } | QueueCommand::Show { .. } => {
            unreachable!("read-only commands are handled directly")
        }
    };
    let ids = select(config, &selection, action).map_err(|e| {
        errln!("error: {e}");
        ExitCode::FAILURE
    })?;
    if ids.is_empty() {
        outln!("No message matches.");
        return Ok(ExitCode::SUCCESS);
    }
    let requests: Vec<Control> = ids.into_iter().map(|id| action.control(id)).collect();
    send(config, &requests)
}

/// Sends each request in turn, printing each answer; fails if any did.
fn send(config: &Config, requests: &[Control]) -> Result<ExitCode, ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| ExitCode::FAILURE)?;
    let mut failed = 0;
    for request in requests {
        match runtime.block_on(crate::admin::control::request(
            &config.server.state_dir,
            request,
        )) {
            Ok(message) => outln!("{message}"),
            Err(e) => {
                errln!("error: {e}");
                failed += 1;
                // Without the daemon the rest would fail the same way.
                if !matches!(e, crate::admin::control::ControlError::Refused(_)) {
                    return Err(ExitCode::FAILURE);
                }
            }
        }
    }
    if requests.len() > 1 {
        let done = requests.len() - failed;
        match failed {
            0 => outln!("{done} message(s) done."),
            _ => outln!(
                "{done} of {} message(s) done, {failed} refused (above).",
                requests.len()
            ),
        }
    }
    if failed > 0 {
        Err(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
