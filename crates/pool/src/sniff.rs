//! One port for Stratum V1 and V2 (`[stratum_v2] on_v1_port`): each
//! connection is told apart by its first bytes, which it sends unprompted
//! in both protocols. A V1 miner's first bytes are a JSON request, `{`
//! and printable UTF-8 up to a newline; a V2 initiator's are its Noise
//! handshake's first message, a 64-byte ElligatorSwift encoding of an
//! ephemeral key, which looks like random bytes. The bytes are peeked, not
//! read: the session or the Noise responder that takes the connection
//! reads them as if nothing had looked.

use std::time::Duration;

use tokio::net::TcpStream;

/// The V2 initiator's first handshake message: one ElligatorSwift-encoded
/// public key.
pub(crate) const V2_FIRST_MESSAGE_BYTES: usize =
    tbg_sv2::stratum_core::noise_sv2::ELLSWIFT_ENCODING_SIZE;

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    V1,
    V2,
    /// Too few bytes to tell yet: a V1 line cut short by the network.
    Undecided,
}

/// Judges a connection by the bytes it sent first. Pure, for tests.
///
/// A first non-whitespace byte other than `{` is V2 at once. Otherwise the
/// bytes are V1 when the line they begin reads as JSON text (UTF-8, no
/// control characters but tab and CR) and either fills the 64 bytes or
/// ends as a request does (at least `MIN_REQUEST_BYTES`, closed by `}`);
/// only that first line is judged, whatever follows it in the segment.
/// Random bytes that begin with `{` or whitespace (5 in 256 handshakes)
/// fail these checks all but always: a short line needs its `}` and its
/// newline in two exact places, a long one dozens of printable bytes.
pub(crate) fn classify(prefix: &[u8]) -> Sniffed {
    let window = &prefix[..prefix.len().min(V2_FIRST_MESSAGE_BYTES)];
    let Some(start) = window.iter().position(|b| !b.is_ascii_whitespace()) else {
        // Nothing but whitespace so far: a V1 line's start, or a V2 key
        // that began with some (a whole one never is whitespace alone).
        return Sniffed::Undecided;
    };
    if window[start] != b'{' {
        return Sniffed::V2;
    }
    let (line, ended) = match window[start..].iter().position(|b| *b == b'\n') {
        Some(end) => (&window[start..start + end], true),
        None => (&window[start..], false),
    };
    let control = |b: &u8| (*b < 0x20 && !matches!(b, b'\t' | b'\r')) || *b == 0x7f;
    if line.iter().any(control) || !utf8_so_far(line) {
        return Sniffed::V2;
    }
    if ended {
        let request = line.trim_ascii_end();
        if request.len() >= MIN_REQUEST_BYTES && request.ends_with(b"}") {
            Sniffed::V1
        } else {
            Sniffed::V2
        }
    } else if window.len() == V2_FIRST_MESSAGE_BYTES {
        Sniffed::V1
    } else {
        Sniffed::Undecided
    }
}

/// The shortest stratum request line: `{"id":1,"method":"","params":[]}`
/// is 33 bytes; nothing a V1 miner sends first is shorter than this.
const MIN_REQUEST_BYTES: usize = 24;

/// Valid UTF-8, allowing a character cut at the end of the window.
fn utf8_so_far(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(error) => error.error_len().is_none(),
    }
}

/// Why sniffing ended without a protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SniffEnd {
    /// The peer closed before it sent anything.
    Closed,
    /// Nothing to tell by within the deadline.
    Silent,
    IoError,
}

/// Peeks at `stream` until its first bytes tell the protocol. Bytes that
/// stay undecided (a V1 line arriving in pieces) are V1 once `patience`
/// has passed since the first of them; a connection that sends nothing
/// within `deadline` ends.
pub(crate) async fn sniff(
    stream: &TcpStream,
    deadline: Duration,
    patience: Duration,
) -> Result<Sniffed, SniffEnd> {
    let mut prefix = [0u8; V2_FIRST_MESSAGE_BYTES];
    let first = tokio::time::timeout(deadline, stream.peek(&mut prefix)).await;
    let mut seen = match first {
        Err(_) => return Err(SniffEnd::Silent),
        Ok(Err(_)) => return Err(SniffEnd::IoError),
        Ok(Ok(0)) => return Err(SniffEnd::Closed),
        Ok(Ok(n)) => n,
    };
    let started = tokio::time::Instant::now();
    // `peek` returns at once while any byte is queued, so waiting for the
    // rest of a line is polling, briefly and rarely: a miner's first line
    // almost always arrives in one segment.
    let mut pause = Duration::from_millis(1);
    loop {
        match classify(&prefix[..seen]) {
            Sniffed::Undecided if started.elapsed() < patience => {}
            Sniffed::Undecided => return Ok(Sniffed::V1),
            decided => return Ok(decided),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
        seen = match stream.peek(&mut prefix).await {
            Ok(0) => return Err(SniffEnd::Closed),
            Ok(n) => n,
            Err(_) => return Err(SniffEnd::IoError),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_request_is_v1() {
        let subscribe =
            br#"{"id":1,"method":"mining.subscribe","params":["bitaxe/BM1366/v2.4.1"]}"#;
        assert_eq!(
            classify(&subscribe[..]),
            Sniffed::V1,
            "64 bytes and more, no newline"
        );
        let short = br#"{"id":1,"method":"mining.subscribe","params":[]}"#;
        let line = |prefix: &[u8], end: &[u8]| [prefix, &short[..], end].concat();
        assert_eq!(classify(&line(b"", b"\n")), Sniffed::V1);
        assert_eq!(classify(&line(b" \r\n", b"\r\n")), Sniffed::V1);
        let unicode = "{\"id\":2,\"params\":[\"bc1q.\u{e9}\u{4e16}\"]}\n".as_bytes();
        assert_eq!(classify(unicode), Sniffed::V1);
        // Only the first line is judged: a C string's NUL after it is not.
        assert_eq!(classify(&line(b"", b"\n\0\x01")), Sniffed::V1);
    }

    #[test]
    fn a_v1_line_cut_short_waits() {
        assert_eq!(classify(b""), Sniffed::Undecided);
        assert_eq!(classify(b"{"), Sniffed::Undecided);
        assert_eq!(classify(b"\r\n"), Sniffed::Undecided, "no brace yet");
        assert_eq!(classify(br#"{"id":1,"meth"#), Sniffed::Undecided);
        // A multi-byte character cut at the end of what arrived.
        let cut = &"{\"u\":\"\u{4e16}\"".as_bytes()[..7];
        assert_eq!(classify(cut), Sniffed::Undecided);
    }

    #[test]
    fn a_noise_handshake_is_v2() {
        assert_eq!(classify(&[0x8a; 64]), Sniffed::V2);
        assert_eq!(classify(&[0x03]), Sniffed::V2, "decided by its first byte");
        // Starting with `{` by chance: a control byte or broken UTF-8 tells.
        let mut key = [b'{'; 64];
        key[40] = 0x01;
        assert_eq!(classify(&key), Sniffed::V2);
        let mut key = [b'{'; 64];
        key[20] = 0xff;
        assert_eq!(classify(&key), Sniffed::V2);
        // A newline early in random bytes ends no request.
        assert_eq!(classify(b"{\n\x8a\x13"), Sniffed::V2);
        assert_eq!(classify(b"{a}\n"), Sniffed::V2);
    }

    #[test]
    fn random_handshakes_are_all_told_apart() {
        // What the pool's sniffing sees of real V2 clients: the first
        // message of Noise NX initiators, 64 random-looking bytes.
        let mut misread = 0;
        for _ in 0..100_000 {
            let halves: [[u8; 32]; 2] = rand::random();
            let mut key = [0u8; 64];
            key[..32].copy_from_slice(&halves[0]);
            key[32..].copy_from_slice(&halves[1]);
            // The hard cases, 5 in 256 handshakes, most of the time: a first
            // byte that a V1 line may begin with.
            let hard = [b'{', b' ', b'\t', b'\r', b'\n'];
            let pick = usize::from(key[63]) % 8;
            if let Some(first) = hard.get(pick) {
                key[0] = *first;
            }
            if pick == 4 {
                key[1] = b'{';
            }
            if classify(&key) != Sniffed::V2 {
                misread += 1;
            }
        }
        assert_eq!(misread, 0);
    }
}
