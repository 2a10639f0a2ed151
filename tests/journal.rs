//! Under systemd, stderr is the journal (`$JOURNAL_STREAM` names it): every line starts with
//! its syslog priority so `journalctl -p` can filter, and text lines leave the time to
//! journald. Anywhere else, lines are as configured.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

/// The relay's stderr lines up to and including the "listening" one, with `JOURNAL_STREAM`
/// naming the stderr pipe itself (`journal`) or something else.
fn first_lines(format: &str, journal: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtprelay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"state\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [admin]\nlisten = \"\"\n[log]\nformat = \"{format}\"\n"
        ),
    )
    .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let stream = std::fs::File::from(std::os::fd::OwnedFd::from(writer.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let journal_stream = match journal {
        true => format!("{}:{}", stream.dev(), stream.ino()),
        false => format!("{}:{}", stream.dev(), stream.ino() + 1),
    };
    let mut relay = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("JOURNAL_STREAM", journal_stream)
        .env_remove("RUST_LOG")
        .stderr(writer)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    relay.kill().unwrap();
    relay.wait().unwrap();
    lines
}

/// syslog priorities of the levels the relay logs at start-up (a relay without accounts
/// warns that mail has nowhere to go).
const PRIORITIES: [(&str, &str); 2] = [("WARN", "<4>"), ("INFO", "<6>")];

#[test]
fn text_lines_carry_their_priority_and_no_time_for_the_journal() {
    let lines = first_lines("text", true);
    for (level, priority) in PRIORITIES {
        let prefix = format!("{priority} {level} ");
        assert!(lines.iter().any(|l| l.starts_with(&prefix)), "{lines:#?}");
    }
    for line in &lines {
        assert!(
            PRIORITIES
                .iter()
                .any(|(level, priority)| line.starts_with(&format!("{priority} {level} "))),
            "{line}"
        );
    }
    for line in first_lines("text", false) {
        // 2026-11-27T18:33:12.590195Z  INFO …
        assert!(line.as_bytes()[0].is_ascii_digit(), "{line}");
    }
}

#[test]
fn json_lines_carry_their_priority_for_the_journal() {
    let lines = first_lines("json", true);
    let mut seen = Vec::new();
    for line in &lines {
        let (priority, json) = line.split_at(line.find('{').unwrap());
        let event: serde_json::Value = serde_json::from_str(json).unwrap();
        let level = event["level"].as_str().unwrap();
        assert!(PRIORITIES.contains(&(level, priority)), "{line}");
        assert!(event["timestamp"].is_string());
        seen.push(level.to_owned());
    }
    assert!(seen.iter().any(|l| l == "WARN") && seen.iter().any(|l| l == "INFO"));
    for line in first_lines("json", false) {
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }
}
