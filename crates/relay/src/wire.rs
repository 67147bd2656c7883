//! Lines over TCP, bounded: a frame longer than [`MAX_FRAME_BYTES`] ends
//! the connection before it is buffered whole.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::MAX_FRAME_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("a frame of more than {MAX_FRAME_BYTES} bytes")]
    TooLong,
    #[error("a frame that is not UTF-8")]
    NotText,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The next line, without its newline.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
) -> Result<String, WireError> {
    buffer.clear();
    let limit = MAX_FRAME_BYTES as u64 + 1;
    let read = (&mut *reader).take(limit).read_until(b'\n', buffer).await?;
    if read == 0 {
        return Err(WireError::Closed);
    }
    if buffer.last() != Some(&b'\n') {
        return Err(if read as u64 >= limit {
            WireError::TooLong
        } else {
            WireError::Closed
        });
    }
    buffer.pop();
    let text = std::str::from_utf8(buffer).map_err(|_| WireError::NotText)?;
    Ok(text.trim_end_matches('\r').to_owned())
}

/// Writes one line and flushes it.
pub async fn write_line<W: AsyncWrite + Unpin>(
    writer: &mut W,
    line: &str,
) -> Result<(), WireError> {
    writer.write_all(line.as_bytes()).await?;
    writer.write_all(b"\n").await?;
    writer.flush().await?;
    Ok(())
}

/// Reads lines into `lines` until the connection ends (the last item is
/// the error that ended it) or the receiver is gone.
pub async fn forward_lines<R: AsyncBufRead + Unpin>(
    mut reader: R,
    lines: tokio::sync::mpsc::Sender<Result<String, WireError>>,
) {
    let mut buffer = Vec::new();
    loop {
        let line = read_line(&mut reader, &mut buffer).await;
        let end = line.is_err();
        if lines.send(line).await.is_err() || end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_and_an_oversized_one_is_refused() {
        let mut input = tokio::io::BufReader::new(&b"one\r\ntwo\npartial"[..]);
        let mut buffer = Vec::new();
        assert_eq!(read_line(&mut input, &mut buffer).await.unwrap(), "one");
        assert_eq!(read_line(&mut input, &mut buffer).await.unwrap(), "two");
        assert!(matches!(
            read_line(&mut input, &mut buffer).await,
            Err(WireError::Closed)
        ));
        let huge = vec![b'x'; MAX_FRAME_BYTES + 10];
        let mut input = tokio::io::BufReader::new(huge.as_slice());
        assert!(matches!(
            read_line(&mut input, &mut buffer).await,
            Err(WireError::TooLong)
        ));
    }
}
