//! Double SHA-256 on fixed buffers (sha2 picks SHA-NI at run time when present).

use sha2::{Digest, Sha256};

pub(crate) fn sha256d(data: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(data)).into()
}

/// Hash of a merkle tree node from its two children (internal byte order).
pub(crate) fn merkle_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut node = [0u8; 64];
    node[..32].copy_from_slice(left);
    node[32..].copy_from_slice(right);
    sha256d(&node)
}

/// Finishes a double SHA-256 whose first pass has absorbed everything.
pub(crate) fn finish_sha256d(engine: Sha256) -> [u8; 32] {
    Sha256::digest(engine.finalize()).into()
}
