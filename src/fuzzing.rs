//! Properties checked by the fuzz targets in `fuzz/` and by `tests/fuzz_corpus.rs`, which
//! replays the committed corpus through the same functions on every `cargo test`.
//! Each panics when a property is broken.

use std::path::Path;

use crate::smtp::command;
use crate::smtp::data::DataReceiver;
use crate::smtp::line::{InputBuffer, Line};

/// Command parsing never panics, and a parsed address never holds a line break.
pub fn smtp_command(data: &[u8]) {
    let mut buffer = InputBuffer::new(512);
    let spare = buffer.spare(data.len());
    spare.copy_from_slice(data);
    buffer.filled(data.len(), data.len());
    while let Some(line) = buffer.next_line() {
        if let Line::Complete(line) = line {
            assert!(line.len() <= 512);
            assert!(!line.contains(&b'\n'));
            if let Ok(command::Command::Mail {
                sender: address, ..
            })
            | Ok(command::Command::Rcpt { recipient: address }) = command::parse(&line)
            {
                assert!(!address.contains(['\r', '\n', '<', ' ']) || address.starts_with('"'));
            }
        }
    }
    let _ = command::parse(data);
}

/// The DATA receiver's output does not depend on how the input is split into reads, holds
/// no bare CR or LF, and never runs past the end-of-data sequence.
///
/// The first byte picks split points; the rest is the stream.
pub fn data_receiver(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut whole = DataReceiver::new();
    let mut expected = Vec::new();
    let consumed = whole.feed(input, &mut expected);
    assert!(consumed <= input.len());
    if whole.is_done() {
        assert!(input[..consumed].ends_with(b"\r\n.\r\n") || input[..consumed] == *b".\r\n");
    } else {
        assert_eq!(consumed, input.len());
    }
    for (i, &b) in expected.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(expected.get(i + 1), Some(&b'\n'), "bare CR in output"),
            b'\n' => assert!(i > 0 && expected[i - 1] == b'\r', "bare LF in output"),
            _ => {}
        }
    }

    let step = (seed as usize % 13) + 1;
    let mut split = DataReceiver::new();
    let mut output = Vec::new();
    let mut offset = 0;
    while offset < consumed {
        let end = (offset + step + (offset * seed as usize) % 7).min(input.len());
        offset += split.feed(&input[offset..end], &mut output);
        if split.is_done() {
            break;
        }
    }
    assert_eq!(output, expected, "output depends on read boundaries");
    assert_eq!(offset, consumed);
    assert_eq!(split.is_done(), whole.is_done());
}

/// Loading a configuration never panics, whatever the text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(Path::new("fuzz.toml"), text.to_owned());
    }
}
