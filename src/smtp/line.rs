//! Command-line framing over the session's input buffer. No I/O.
//!
//! Lines end in LF (CRLF or a bare LF, which printers send). An over-long line is discarded
//! up to its end and reported once, so the client and server stay in step.

/// What the buffer holds next.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its terminator.
    Complete(Vec<u8>),
    /// A line longer than the limit ended here; its bytes were dropped.
    TooLong,
}

#[derive(Debug)]
pub struct InputBuffer {
    bytes: Vec<u8>,
    start: usize,
    max_line: usize,
    /// True while dropping the rest of an over-long line.
    discarding: bool,
}

impl InputBuffer {
    pub fn new(max_line: usize) -> Self {
        InputBuffer {
            bytes: Vec::with_capacity(1024),
            start: 0,
            max_line,
            discarding: false,
        }
    }

    /// The unread bytes.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    /// Drops everything unread (after STARTTLS: nothing sent before the handshake may count).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
        self.discarding = false;
    }

    /// Releases spare capacity beyond what the unread bytes need.
    pub fn shrink(&mut self) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.shrink_to(self.max_line);
    }

    /// Space to read into; call [`InputBuffer::filled`] with the count read.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.start > 0 && self.start * 2 >= self.bytes.len() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        let len = self.bytes.len();
        self.bytes.resize(len + at_least, 0);
        &mut self.bytes[len..]
    }

    /// Keeps `n` bytes of the space handed out by the last [`InputBuffer::spare`].
    pub fn filled(&mut self, spare_len: usize, n: usize) {
        let len = self.bytes.len();
        self.bytes.truncate(len - spare_len + n);
    }

    /// Takes the next command line, if one is complete.
    pub fn next_line(&mut self) -> Option<Line> {
        let pending = &self.bytes[self.start..];
        match memchr::memchr(b'\n', pending) {
            Some(end) => {
                let mut line = &pending[..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let result = if self.discarding || line.len() > self.max_line {
                    Line::TooLong
                } else {
                    Line::Complete(line.to_vec())
                };
                self.discarding = false;
                self.consume(end + 1);
                Some(result)
            }
            None if pending.len() > self.max_line => {
                // Keep memory bounded: drop what we have and remember to drop the rest.
                self.discarding = true;
                let n = pending.len();
                self.consume(n);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(buffer: &mut InputBuffer, data: &[u8]) {
        let spare = buffer.spare(data.len());
        spare.copy_from_slice(data);
        buffer.filled(data.len(), data.len());
    }

    #[test]
    fn crlf_and_bare_lf_lines() {
        let mut buffer = InputBuffer::new(100);
        push(&mut buffer, b"EHLO a\r\nNOOP\nQU");
        assert_eq!(buffer.next_line(), Some(Line::Complete(b"EHLO a".to_vec())));
        assert_eq!(buffer.next_line(), Some(Line::Complete(b"NOOP".to_vec())));
        assert_eq!(buffer.next_line(), None);
        push(&mut buffer, b"IT\r\n");
        assert_eq!(buffer.next_line(), Some(Line::Complete(b"QUIT".to_vec())));
    }

    #[test]
    fn over_long_line_is_reported_once_at_its_end() {
        let mut buffer = InputBuffer::new(10);
        push(&mut buffer, &[b'x'; 25]);
        assert_eq!(buffer.next_line(), None);
        push(&mut buffer, &[b'y'; 25]);
        assert_eq!(buffer.next_line(), None);
        push(&mut buffer, b"zz\r\nNOOP\r\n");
        assert_eq!(buffer.next_line(), Some(Line::TooLong));
        assert_eq!(buffer.next_line(), Some(Line::Complete(b"NOOP".to_vec())));
    }
}
