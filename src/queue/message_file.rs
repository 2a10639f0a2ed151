//! The on-disk form of one queued message: a single immutable file.
//!
//! ```text
//! SMTPRELAY-SPOOL 1\n
//! {envelope as one line of JSON}\n
//! <message content: CRLF lines, not dot-stuffed, Received header first>
//! \nEND <content length, 16 hex> <CRC-32 of content, 8 hex>\n
//! ```
//!
//! The trailer is written last: a file without a valid one was never acknowledged (it was cut
//! short) or has been damaged, and is moved to `corrupt/` rather than delivered or dropped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::id::QueueId;

const MAGIC: &[u8] = b"SMTPRELAY-SPOOL 1\n";
pub const TRAILER_LEN: usize = 31;
/// Envelopes are small (500 recipients fit in 32 KiB); anything larger is damage.
const MAX_ENVELOPE_LEN: usize = 1 << 20;

/// Who sent a message and to whom, as accepted at intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// Milliseconds since the Unix epoch.
    pub received_at: u64,
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub eight_bit: bool,
    pub client: ClientInfo,
    /// A delivery status notification made by this relay: it never bounces in turn.
    #[serde(default)]
    pub is_dsn: bool,
    /// The account an operator chose for this message (a test message from the console):
    /// it goes through that account, whatever the accounts' `senders` say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl Envelope {
    /// A message the relay writes itself (a DSN, an alert): null sender and marked as a
    /// report, so it never bounces or causes further mail.
    pub fn from_relay(recipient: &str, hostname: &str, smtputf8: bool) -> Envelope {
        Envelope {
            id: QueueId::generate(),
            received_at: crate::clock::unix_ms(),
            sender: String::new(),
            recipients: vec![recipient.to_owned()],
            smtputf8,
            eight_bit: true,
            client: ClientInfo {
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                helo: hostname.to_owned(),
                user: None,
                tls: false,
            },
            is_dsn: true,
            account: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub address: IpAddr,
    pub helo: String,
    /// The SMTP AUTH user, if the client authenticated.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolFileError {
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    #[error("not a spool file (bad first line)")]
    BadMagic,
    #[error("envelope unreadable: {0}")]
    BadEnvelope(String),
    #[error("incomplete: the end marker is missing or damaged")]
    Truncated,
    #[error("content checksum mismatch")]
    ChecksumMismatch,
}

impl SpoolFileError {
    /// The file itself is damaged (not a read that failed): it can never be delivered.
    pub fn is_damage(&self) -> bool {
        !matches!(self, SpoolFileError::Io(_))
    }
}

/// The bytes that precede the content.
pub fn encode_header(envelope: &Envelope) -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    // serde_json escapes control characters, so the JSON is one line.
    serde_json::to_writer(&mut header, envelope).expect("an envelope always serialises");
    header.push(b'\n');
    header
}

pub fn encode_trailer(content_len: u64, crc: u32) -> [u8; TRAILER_LEN] {
    let text = format!("\nEND {content_len:016x} {crc:08x}\n");
    text.as_bytes().try_into().expect("fixed-width trailer")
}

fn decode_trailer(trailer: &[u8]) -> Option<(u64, u32)> {
    let text = std::str::from_utf8(trailer).ok()?;
    let rest = text.strip_prefix("\nEND ")?.strip_suffix('\n')?;
    let (len, crc) = rest.split_once(' ')?;
    if len.len() != 16 || crc.len() != 8 {
        return None;
    }
    Some((
        u64::from_str_radix(len, 16).ok()?,
        u32::from_str_radix(crc, 16).ok()?,
    ))
}

/// A spool file whose structure has been checked (the content checksum is checked on read).
#[derive(Debug, Clone)]
pub struct MessageFile {
    pub envelope: Envelope,
    pub content_offset: u64,
    pub content_len: u64,
    pub crc: u32,
}

/// Reads the header: the envelope, and where the content starts. Small reads: an
/// envelope is a few hundred bytes, and start-up reads a million of them.
fn read_header(file: &mut File) -> Result<(Envelope, u64), SpoolFileError> {
    let mut reader = BufReader::with_capacity(1024, file);
    let mut magic = [0u8; MAGIC.len()];
    reader
        .read_exact(&mut magic)
        .map_err(|_| SpoolFileError::BadMagic)?;
    if magic != MAGIC {
        return Err(SpoolFileError::BadMagic);
    }
    let mut json = Vec::new();
    (&mut reader)
        .take(MAX_ENVELOPE_LEN as u64)
        .read_until(b'\n', &mut json)?;
    if json.last() != Some(&b'\n') {
        return Err(SpoolFileError::Truncated);
    }
    let envelope: Envelope =
        serde_json::from_slice(&json).map_err(|e| SpoolFileError::BadEnvelope(e.to_string()))?;
    Ok((envelope, (MAGIC.len() + json.len()) as u64))
}

impl MessageFile {
    /// Only the envelope of a file [`MessageFile::open`] has checked before (the scheduler's
    /// start-up, after the spool's): the end is not looked at again.
    pub fn read_envelope(path: &Path) -> Result<Envelope, SpoolFileError> {
        Ok(read_header(&mut File::open(path)?)?.0)
    }

    /// Reads the envelope and checks that the file is complete.
    pub fn open(path: &Path) -> Result<MessageFile, SpoolFileError> {
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let (envelope, content_offset) = read_header(&mut file)?;

        if file_len < content_offset + TRAILER_LEN as u64 {
            return Err(SpoolFileError::Truncated);
        }
        let mut trailer = [0u8; TRAILER_LEN];
        std::os::unix::fs::FileExt::read_exact_at(
            &file,
            &mut trailer,
            file_len - TRAILER_LEN as u64,
        )?;
        let (content_len, crc) = decode_trailer(&trailer).ok_or(SpoolFileError::Truncated)?;
        if content_offset + content_len + TRAILER_LEN as u64 != file_len {
            return Err(SpoolFileError::Truncated);
        }
        Ok(MessageFile {
            envelope,
            content_offset,
            content_len,
            crc,
        })
    }

    /// The first `max` bytes of the content, unchecked (for a look at its headers).
    pub fn read_head(&self, path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(self.content_offset))?;
        let mut head = vec![0u8; (self.content_len as usize).min(max)];
        file.read_exact(&mut head)?;
        Ok(head)
    }

    /// Maps the content (it stays in the page cache: nothing is copied onto the heap) and
    /// checks it against the stored checksum. Spool files are never changed once written, so
    /// the mapping stays valid; one removed meanwhile stays mapped until it is dropped.
    pub fn map_content(&self, path: &Path) -> Result<memmap2::Mmap, SpoolFileError> {
        let file = File::open(path)?;
        // SAFETY: the file is immutable (written once, renamed into the queue, then only
        // removed), so the mapped bytes cannot change under the reader.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(self.content_offset)
                .len(self.content_len as usize)
                .map(&file)?
        };
        if crc32fast::hash(&map) != self.crc {
            return Err(SpoolFileError::ChecksumMismatch);
        }
        Ok(map)
    }

    /// Reads the content and checks it against the stored checksum.
    pub fn read_content(&self, path: &Path) -> Result<Vec<u8>, SpoolFileError> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(self.content_offset))?;
        let mut content = vec![0u8; self.content_len as usize];
        file.read_exact(&mut content)?;
        if crc32fast::hash(&content) != self.crc {
            return Err(SpoolFileError::ChecksumMismatch);
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn envelope() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            received_at: 1_700_000_000_000,
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into(), "line\nbreak@x.example".into()],
            smtputf8: false,
            eight_bit: true,
            client: ClientInfo {
                address: "192.0.2.7".parse().unwrap(),
                helo: "printer".into(),
                user: None,
                tls: false,
            },
            is_dsn: false,
            account: None,
        }
    }

    fn write(path: &Path, envelope: &Envelope, content: &[u8], cut: usize) {
        let mut bytes = encode_header(envelope);
        bytes.extend_from_slice(content);
        bytes.extend_from_slice(&encode_trailer(
            content.len() as u64,
            crc32fast::hash(content),
        ));
        bytes.truncate(bytes.len() - cut);
        File::create(path).unwrap().write_all(&bytes).unwrap();
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let envelope = envelope();
        write(&path, &envelope, b"Subject: x\r\n\r\nhi\r\n", 0);
        let file = MessageFile::open(&path).unwrap();
        assert_eq!(file.envelope, envelope);
        assert_eq!(
            file.read_content(&path).unwrap(),
            b"Subject: x\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let envelope = envelope();
        let full = encode_header(&envelope).len() + 5 + TRAILER_LEN;
        for cut in 1..full {
            write(&path, &envelope, b"hello", cut);
            assert!(MessageFile::open(&path).is_err(), "cut {cut} not detected");
        }
    }

    #[test]
    fn damaged_content_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        write(&path, &envelope(), b"hello", 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - TRAILER_LEN - 2;
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let file = MessageFile::open(&path).unwrap();
        assert!(matches!(
            file.read_content(&path),
            Err(SpoolFileError::ChecksumMismatch)
        ));
    }
}
