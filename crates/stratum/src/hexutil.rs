//! Minimal hex helpers (lower/upper case accepted), kept local to avoid a dependency.

pub(crate) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Decodes an even-length hex string; `None` on any invalid character or odd length.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 == 1 {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let high = (pair.first().copied()? as char).to_digit(16)?;
            let low = (pair.get(1).copied()? as char).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

/// Parses 1..=8 hex digits as a big-endian u32 (the way stratum sends ntime/nonce/masks).
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    if !is_hex(s) || s.len() > 8 {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}
