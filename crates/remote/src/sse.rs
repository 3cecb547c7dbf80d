//! An incremental parser for server-sent events, the framing of OpenAI-style streams.
//!
//! Bytes arrive in whatever pieces the network delivers: a line, an event or a UTF-8
//! character may be split anywhere. The parser keeps the unfinished line and yields whole
//! events. It follows the event-stream rules that matter for chat streams: lines end with
//! `\n`, `\r\n` or `\r`; a blank line ends an event; `data:` lines of one event are joined
//! with `\n`; lines starting with `:` are comments (keep-alives); one space after the colon is
//! dropped; unknown fields are ignored.

use std::fmt;

/// The longest line the parser holds before it gives up: a reply that never ends a line is
/// not an event stream.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// One event: its `event:` type, if any, and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`None` for the default `message` type).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Why a byte stream is not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line was not UTF-8.
    #[error("line {line} of the event stream is not valid UTF-8")]
    NotUtf8 {
        /// The 1-based line number.
        line: usize,
    },
    /// A line grew past [`MAX_LINE_BYTES`].
    #[error("line {line} of the event stream is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong {
        /// The 1-based line number.
        line: usize,
    },
}

/// Turns bytes into [`SseEvent`]s; feed it every piece in order.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    lines_seen: usize,
    skip_lf: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
}

impl fmt::Debug for SseParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Event data is answer text: show sizes only.
        f.debug_struct("SseParser")
            .field("partial_line_bytes", &self.line.len())
            .field("lines_seen", &self.lines_seen)
            .field("pending_data_bytes", &self.data.len())
            .finish()
    }
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the next piece of the stream, appending every event it completes to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = bytes;
        if self.skip_lf && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.skip_lf = false;
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            let was_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    // The `\n` of a `\r\n` may come in the next piece.
                    None => self.skip_lf = true,
                }
            }
            self.end_line(out)?;
        }
        if !rest.is_empty() {
            self.line.extend_from_slice(rest);
            if self.line.len() > MAX_LINE_BYTES {
                return Err(SseError::LineTooLong {
                    line: self.lines_seen + 1,
                });
            }
        }
        Ok(())
    }

    /// The stream ended: completes a last event whose blank line never came (servers that
    /// close right after their final `data:` line), then resets.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out);
        self.skip_lf = false;
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.lines_seen += 1;
        let raw = std::mem::take(&mut self.line);
        let line = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8 {
            line: self.lines_seen,
        })?;
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.has_data = false;
        self.event = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut out).unwrap();
        }
        p.finish(&mut out).unwrap();
        out
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn data_lines_comments_and_multi_line_events() {
        let events = parse_all(&[
            b": keep-alive\n\ndata: one\n\ndata:two\ndata:  three\n\nevent: error\ndata: x\n\n",
        ]);
        assert_eq!(data(&events), ["one", "two\n three", "x"]);
        assert_eq!(events[2].event.as_deref(), Some("error"));
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn every_line_ending_counts() {
        let events = parse_all(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]);
        assert_eq!(data(&events), ["a", "b", "c"]);
    }

    #[test]
    fn crlf_split_across_pieces_is_one_line_end() {
        let events = parse_all(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]);
        assert_eq!(data(&events), ["a", "b"]);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let text = "data: héllo 🌍\n\n".as_bytes();
        let (a, b) = text.split_at(9);
        assert_eq!(data(&parse_all(&[a, b])), ["héllo 🌍"]);
    }

    #[test]
    fn a_last_event_without_its_blank_line_still_counts() {
        assert_eq!(data(&parse_all(&[b"data: [DONE]"])), ["[DONE]"]);
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_line() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let err = p
            .feed(b"data: ok\n\ndata: \xff\xfe\n", &mut out)
            .unwrap_err();
        assert_eq!(err, SseError::NotUtf8 { line: 3 });
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let chunk = vec![b'a'; 1024 * 1024];
        let mut result = Ok(());
        for _ in 0..9 {
            result = p.feed(&chunk, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(SseError::LineTooLong { line: 1 })));
    }
}
