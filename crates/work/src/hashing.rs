//! Double SHA-256 on fixed buffers. Fixed-size inputs go straight to the
//! compression function (sha2 picks SHA-NI at run time when present),
//! skipping the streaming buffer: the share path is ~45 compressions long.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};

const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Padding block that follows exactly 64 message bytes (length 512 bits).
const PAD_AFTER_64: [u8; 64] = {
    let mut block = [0u8; 64];
    block[0] = 0x80;
    block[62] = 0x02;
    block
};

type Block = GenericArray<u8, sha2::digest::consts::U64>;

fn to_block(bytes: &[u8; 64]) -> Block {
    *Block::from_slice(bytes)
}

/// SHA-256 of a 32-byte digest, given as state words (the second pass).
fn second_pass(first: &[u32; 8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    for (chunk, word) in block[..32].chunks_exact_mut(4).zip(first) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    block[32] = 0x80;
    block[62] = 0x01; // 256 bits
    let mut state = IV;
    sha2::compress256(&mut state, &[to_block(&block)]);
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Double SHA-256 of any input (streaming); the reference for the tests.
#[cfg(test)]
fn sha256d(data: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(data)).into()
}

/// Double SHA-256 of an 80-byte block header.
pub(crate) fn sha256d_header(header: &[u8; 80]) -> [u8; 32] {
    let mut first = [0u8; 64];
    first.copy_from_slice(&header[..64]);
    let mut second = [0u8; 64];
    second[..16].copy_from_slice(&header[64..]);
    second[16] = 0x80;
    second[62] = 0x02;
    second[63] = 0x80; // 640 bits
    let mut state = IV;
    sha2::compress256(&mut state, &[to_block(&first), to_block(&second)]);
    second_pass(&state)
}

/// Hash of a merkle tree node from its two children (internal byte order).
pub(crate) fn merkle_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut node = [0u8; 64];
    node[..32].copy_from_slice(left);
    node[32..].copy_from_slice(right);
    let mut state = IV;
    sha2::compress256(&mut state, &[to_block(&node), to_block(&PAD_AFTER_64)]);
    second_pass(&state)
}

/// Finishes a double SHA-256 whose first pass has absorbed everything.
pub(crate) fn finish_sha256d(engine: Sha256) -> [u8; 32] {
    Sha256::digest(engine.finalize()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_paths_match_streaming_sha256d() {
        let mut header = [0u8; 80];
        for (i, b) in header.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        assert_eq!(sha256d_header(&header), sha256d(&header));
        let left = [0x11; 32];
        let right = [0xee; 32];
        assert_eq!(merkle_node(&left, &right), sha256d(&[left, right].concat()));
        assert_ne!(merkle_node(&left, &right), merkle_node(&right, &left));
    }
}
