//! An incremental parser for server-sent events (the `text/event-stream`
//! format both OpenAI and Anthropic stream in).
//!
//! Bytes arrive in arbitrary pieces: a line, a UTF-8 character or an event
//! may be split across network reads. [`SseParser::push`] buffers the
//! incomplete tail and returns only whole events, following the WHATWG
//! event-stream rules: lines end in `\n`, `\r\n` or `\r`; a blank line
//! dispatches the event; `data` lines are joined with `\n`; lines starting
//! with `:` are comments; an event without data is dropped.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when present.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Turns a byte stream into [`SseEvent`]s.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes not yet ending in a line terminator.
    pending: Vec<u8>,
    /// Whether the previous byte was a `\r` (so a following `\n` is part of
    /// the same terminator).
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next bytes; returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.pending);
                    if let Some(event) = self.line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.pending.push(byte);
                }
            }
        }
        events
    }

    /// The stream ended: dispatch an event left without its blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let line = std::mem::take(&mut self.pending);
        let from_tail = if line.is_empty() {
            None
        } else {
            self.line(&line)
        };
        from_tail.or_else(|| self.dispatch())
    }

    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
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
            // `id` and `retry` matter to browsers reconnecting; a model
            // stream is never resumed, so they are ignored.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in input.chunks(piece) {
            events.extend(parser.push(chunk));
        }
        events.extend(parser.finish());
        events
    }

    #[test]
    fn events_survive_any_split() {
        let input = "event: message_start\ndata: {\"a\":\"é\"}\n\n: ping\r\ndata: one\r\ndata: two\r\n\r\ndata:[DONE]\n\n"
            .as_bytes();
        let expected = vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":\"é\"}".into(),
            },
            SseEvent {
                event: None,
                data: "one\ntwo".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in 1..input.len() {
            assert_eq!(all(input, piece), expected, "split every {piece} bytes");
        }
    }

    #[test]
    fn bare_cr_terminates_lines_and_unterminated_tail_is_dispatched() {
        assert_eq!(
            all(b"data: x\r\rdata: y", 3),
            vec![
                SseEvent {
                    event: None,
                    data: "x".into()
                },
                SseEvent {
                    event: None,
                    data: "y".into()
                }
            ]
        );
    }

    #[test]
    fn event_without_data_is_dropped() {
        assert!(all(b"event: ping\n\n", 4).is_empty());
    }
}
