//! Reading a V1 connection's lines: one line at a time, at most the
//! configured length, handled where it lies in the read buffer when it can
//! be (no copy), gathered across reads when it spans them.

use super::*;

pub(super) enum LineRead {
    Line(LineAt),
    Eof,
    TooLong,
}

/// Where a line `read_line_limited` read is.
pub(super) enum LineAt {
    /// The first this many bytes of the reader's buffer, not yet consumed
    /// (the usual case: no copy, and an idle miner holds no line buffer).
    Buffer(usize),
    /// In `buf`, gathered across reads.
    Gathered,
}

/// Reads one '\n'-terminated line (without the newline), never holding
/// more than `max` bytes. A line that spans reads is gathered in `buf`;
/// partial data stays there, so the call can be cancelled in a `select!`
/// and resumed. `take_line` hands the line on and lets go of it.
pub(super) async fn read_line_limited<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            if buf.len() + pos > max {
                return Ok(LineRead::TooLong);
            }
            if buf.is_empty() {
                return Ok(LineRead::Line(LineAt::Buffer(pos)));
            }
            buf.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            return Ok(LineRead::Line(LineAt::Gathered));
        }
        let len = available.len();
        if buf.len() + len > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(available);
        reader.consume(len);
    }
}

impl Session {
    /// Handles the line `read_line_limited` read at `at`, then lets go of
    /// it: consumed from the reader's buffer, or `line` freed (a line that
    /// spanned reads is rare for a paced miner; an idle one keeps nothing).
    pub(super) fn take_line<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut BufReader<R>,
        line: &mut Vec<u8>,
        at: LineAt,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        match at {
            LineAt::Buffer(len) => {
                let keep = self.handle_line(&stream.buffer()[..len], out, work_rx);
                stream.consume(len + 1);
                keep
            }
            LineAt::Gathered => {
                let keep = self.handle_line(line, out, work_rx);
                *line = Vec::new();
                keep
            }
        }
    }
}
