//! The DATA receiver: turns the dot-stuffed byte stream after `354` into message content.
//! No I/O; fed whatever chunks the socket yields.
//!
//! Three rules close SMTP smuggling (CVE-2023-51764 and friends):
//! - only `CRLF . CRLF` ends the message: a dot line after a bare LF or CR, or ended by one,
//!   is content;
//! - a bare LF or CR is a line break and comes out as CRLF, so the output never holds one
//!   (the [`DataReceiver::saw_bare_newline`] flag lets the session reject such messages instead);
//! - the receiver is a byte-level state machine, so the output does not depend on how the input
//!   was split into reads.

/// Where in the line structure the receiver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line. `after_crlf` is true when the previous line ended with a real
    /// CRLF (or this is the first line), the only case in which a lone dot ends the data.
    LineStart { after_crlf: bool },
    /// A dot at the start of a line.
    Dot { after_crlf: bool },
    /// A dot and a CR at the start of a line.
    DotCr { after_crlf: bool },
    /// Inside a line.
    Middle,
    /// A CR inside (or at the start of) a line: CRLF or a bare CR, decided by the next byte.
    Cr,
    /// The end sequence has been consumed.
    Done,
}

#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    saw_bare_newline: bool,
}

impl Default for DataReceiver {
    fn default() -> Self {
        DataReceiver::new()
    }
}

impl DataReceiver {
    pub fn new() -> Self {
        DataReceiver {
            state: State::LineStart { after_crlf: true },
            saw_bare_newline: false,
        }
    }

    /// True once a bare CR or LF has been seen (and normalised).
    pub fn saw_bare_newline(&self) -> bool {
        self.saw_bare_newline
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds `input`, appending content to `out`. Returns how many bytes were consumed: all of
    /// them, unless the end sequence was found, in which case the bytes after it (pipelined
    /// commands) are left for the caller.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Middle {
                // Fast path: copy up to the next CR or LF in one go.
                match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(n) => {
                        out.extend_from_slice(&input[i..i + n]);
                        i += n;
                    }
                    None => {
                        out.extend_from_slice(&input[i..]);
                        return input.len();
                    }
                }
            }
            let byte = input[i];
            // `step` returns false when the byte must be looked at again in the new state.
            if self.step(byte, out) {
                i += 1;
            }
            if self.state == State::Done {
                return i;
            }
        }
        input.len()
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        use State::*;
        match (self.state, byte) {
            (Done, _) => return true,
            (Middle | LineStart { .. }, b'\r') => self.state = Cr,
            (Middle | LineStart { .. }, b'\n') => self.line_break(out, false),
            (LineStart { after_crlf }, b'.') => self.state = Dot { after_crlf },
            (LineStart { .. } | Middle, _) => {
                out.push(byte);
                self.state = Middle;
            }
            (Cr, b'\n') => self.line_break(out, true),
            (Cr, _) => {
                // Bare CR: a line break, then the byte starts the next line.
                self.line_break(out, false);
                return false;
            }
            (Dot { after_crlf }, b'\r') => self.state = DotCr { after_crlf },
            (Dot { .. }, b'\n') => {
                // A lone dot ended by a bare LF is content, never the end.
                out.push(b'.');
                self.line_break(out, false);
            }
            (Dot { .. }, _) => {
                // RFC 5321 4.5.2: a leading dot followed by more text is removed.
                self.state = Middle;
                return false;
            }
            (DotCr { after_crlf: true }, b'\n') => self.state = Done,
            (DotCr { after_crlf: false }, b'\n') => {
                out.push(b'.');
                self.line_break(out, true);
            }
            (DotCr { .. }, _) => {
                out.push(b'.');
                self.line_break(out, false);
                return false;
            }
        }
        true
    }

    fn line_break(&mut self, out: &mut Vec<u8>, real_crlf: bool) {
        out.extend_from_slice(b"\r\n");
        if !real_crlf {
            self.saw_bare_newline = true;
        }
        self.state = State::LineStart {
            after_crlf: real_crlf,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` whole; returns (content, consumed, done, bare newline seen).
    fn receive(input: &[u8]) -> (Vec<u8>, usize, bool, bool) {
        let mut receiver = DataReceiver::new();
        let mut out = Vec::new();
        let consumed = receiver.feed(input, &mut out);
        (
            out,
            consumed,
            receiver.is_done(),
            receiver.saw_bare_newline(),
        )
    }

    #[test]
    fn plain_message_and_pipelined_rest() {
        let (out, consumed, done, bare) = receive(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(consumed, 23);
        assert!(done && !bare);
    }

    #[test]
    fn empty_message() {
        let (out, consumed, done, _) = receive(b".\r\n");
        assert_eq!((out.as_slice(), consumed, done), (&b""[..], 3, true));
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, done, _) = receive(b"..leading\r\n...\r\n.x\r\n.\r\n");
        assert!(done);
        assert_eq!(out, b".leading\r\n..\r\nx\r\n");
    }

    #[test]
    fn bare_newlines_are_normalised() {
        let (out, _, done, bare) = receive(b"a\nb\rc\r\r\nd\r\n.\r\n");
        assert!(done && bare);
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\nd\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_the_message() {
        for payload in [
            &b"\n.\r\n"[..],
            b"\r.\r",
            b"\n.\n",
            b"\r\n.\r",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\n.\r",
            b"\r.\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(payload);
            input.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\n");
            let (out, consumed, done, _) = receive(&input);
            assert!(!done, "{payload:?} ended the message");
            assert_eq!(consumed, input.len());
            assert!(out.windows(4).any(|w| w == b"MAIL"), "{payload:?}");
        }
    }

    #[test]
    fn output_independent_of_chunking() {
        let input = b"a\r\n..b\n.\r\nc\r.\rd\r\n\r\n.\r\n";
        let (whole, ..) = receive(input);
        for split in 0..input.len() {
            let mut receiver = DataReceiver::new();
            let mut out = Vec::new();
            let first = receiver.feed(&input[..split], &mut out);
            assert_eq!(first, split);
            receiver.feed(&input[split..], &mut out);
            assert!(receiver.is_done());
            assert_eq!(out, whole, "split at {split}");
        }
    }
}
