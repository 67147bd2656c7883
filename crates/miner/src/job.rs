//! Work as a miner sees it: a `mining.notify` turned into block headers.
//!
//! This is written from the miner's side on purpose, apart from the pool's own
//! share checking (`tbg-work`), so that tests which mine with it cross-check
//! the pool instead of repeating its code.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::MinerError;

/// One `mining.notify`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinerJob {
    pub job_id: String,
    /// Previous block hash exactly as sent (word-swapped, stratum order).
    pub prevhash_hex: String,
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    pub clean_jobs: bool,
    prevhash_header: [u8; 32],
}

fn param_str<'a>(params: &'a [Value], index: usize, name: &str) -> Result<&'a str, MinerError> {
    params.get(index).and_then(Value::as_str).ok_or_else(|| {
        MinerError::Protocol(format!("mining.notify: {name} missing or not a string"))
    })
}

fn hex_u32(text: &str, name: &str) -> Result<u32, MinerError> {
    u32::from_str_radix(text, 16).map_err(|_| {
        MinerError::Protocol(format!(
            "mining.notify: {name} {text:?} is not 8 hex digits"
        ))
    })
}

fn hex_bytes(text: &str, name: &str) -> Result<Vec<u8>, MinerError> {
    hex::decode(text).map_err(|_| MinerError::Protocol(format!("mining.notify: {name} is not hex")))
}

impl MinerJob {
    /// Decodes the 9 params of `mining.notify`.
    pub fn from_notify_params(params: &Value) -> Result<MinerJob, MinerError> {
        let params = params
            .as_array()
            .ok_or_else(|| MinerError::Protocol("mining.notify: params not an array".into()))?;
        if params.len() < 9 {
            return Err(MinerError::Protocol(format!(
                "mining.notify: {} params, expected 9",
                params.len()
            )));
        }
        let prevhash_hex = param_str(params, 1, "prevhash")?.to_string();
        let prev = hex_bytes(&prevhash_hex, "prevhash")?;
        let prev: [u8; 32] = prev
            .try_into()
            .map_err(|_| MinerError::Protocol("mining.notify: prevhash is not 32 bytes".into()))?;
        // Stratum sends the header's prevhash with each 4-byte word reversed.
        let mut prevhash_header = [0u8; 32];
        for (out, word) in prevhash_header
            .chunks_exact_mut(4)
            .zip(prev.chunks_exact(4))
        {
            out.copy_from_slice(&[word[3], word[2], word[1], word[0]]);
        }
        let branch = params[4]
            .as_array()
            .ok_or_else(|| {
                MinerError::Protocol("mining.notify: merkle branch not an array".into())
            })?
            .iter()
            .map(|h| {
                let bytes = hex_bytes(h.as_str().unwrap_or(""), "merkle branch")?;
                bytes.try_into().map_err(|_| {
                    MinerError::Protocol(
                        "mining.notify: merkle branch entry is not 32 bytes".into(),
                    )
                })
            })
            .collect::<Result<Vec<[u8; 32]>, MinerError>>()?;
        Ok(MinerJob {
            job_id: param_str(params, 0, "job_id")?.to_string(),
            prevhash_hex,
            coinb1: hex_bytes(param_str(params, 2, "coinb1")?, "coinb1")?,
            coinb2: hex_bytes(param_str(params, 3, "coinb2")?, "coinb2")?,
            merkle_branch: branch,
            version: hex_u32(param_str(params, 5, "version")?, "version")?,
            nbits: hex_u32(param_str(params, 6, "nbits")?, "nbits")?,
            ntime: hex_u32(param_str(params, 7, "ntime")?, "ntime")?,
            clean_jobs: params[8].as_bool().unwrap_or(false),
            prevhash_header,
        })
    }

    /// The coinbase transaction (without witness) for these extranonces.
    pub fn coinbase(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
        let mut tx = Vec::with_capacity(self.coinb1.len() + self.coinb2.len() + 16);
        tx.extend_from_slice(&self.coinb1);
        tx.extend_from_slice(extranonce1);
        tx.extend_from_slice(extranonce2);
        tx.extend_from_slice(&self.coinb2);
        tx
    }

    /// The merkle root for these extranonces (internal byte order).
    pub fn merkle_root(&self, extranonce1: &[u8], extranonce2: &[u8]) -> [u8; 32] {
        let mut root = sha256d(&self.coinbase(extranonce1, extranonce2));
        for step in &self.merkle_branch {
            let mut pair = [0u8; 64];
            pair[..32].copy_from_slice(&root);
            pair[32..].copy_from_slice(step);
            root = sha256d(&pair);
        }
        root
    }

    /// The 80-byte header; `nonce` goes in bytes 76..80.
    pub fn header(&self, merkle_root: &[u8; 32], ntime: u32, nonce: u32, version: u32) -> [u8; 80] {
        let mut header = [0u8; 80];
        header[0..4].copy_from_slice(&version.to_le_bytes());
        header[4..36].copy_from_slice(&self.prevhash_header);
        header[36..68].copy_from_slice(merkle_root);
        header[68..72].copy_from_slice(&ntime.to_le_bytes());
        header[72..76].copy_from_slice(&self.nbits.to_le_bytes());
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        header
    }
}

impl MinerJob {
    /// Searches nonces from `start` for a header meeting `difficulty`;
    /// returns the nonce and its hash. Blocking: call off the async runtime
    /// for large difficulties.
    pub fn find_nonce(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        version: u32,
        difficulty: f64,
        start: u32,
    ) -> Option<(u32, [u8; 32])> {
        let root = self.merkle_root(extranonce1, extranonce2);
        let mut header = self.header(&root, ntime, start, version);
        for nonce in start..=u32::MAX {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let hash = sha256d(&header);
            if hash_difficulty(&hash) >= difficulty {
                return Some((nonce, hash));
            }
        }
        None
    }

    /// A nonce whose header meets neither `difficulty` nor the network
    /// target (for rejection tests).
    pub fn find_failing_nonce(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        version: u32,
        difficulty: f64,
    ) -> u32 {
        let root = self.merkle_root(extranonce1, extranonce2);
        let mut header = self.header(&root, ntime, 0, version);
        for nonce in 0..=u32::MAX {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let hash = sha256d(&header);
            if hash_difficulty(&hash) < difficulty && !crate::cpu::meets_nbits(&hash, self.nbits) {
                return nonce;
            }
        }
        0
    }
}

/// Double SHA-256.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// Difficulty of a header hash (internal byte order), relative to the
/// difficulty-1 target 0x00000000ffff0000...; exact enough for share checks.
pub fn hash_difficulty(hash: &[u8; 32]) -> f64 {
    // The hash is a little-endian 256-bit number.
    let mut value = 0f64;
    for byte in hash.iter().rev() {
        value = value * 256.0 + f64::from(*byte);
    }
    if value == 0.0 {
        return f64::INFINITY;
    }
    let diff1 = 65535.0 * 2f64.powi(208);
    diff1 / value
}

/// Target (as a little-endian 256-bit number in f64 form) compared through
/// difficulty: a hash meets difficulty `d` when its difficulty is at least `d`.
pub fn meets_difficulty(hash: &[u8; 32], difficulty: f64) -> bool {
    hash_difficulty(hash) >= difficulty
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_of_diff1_target_is_one() {
        let mut hash = [0u8; 32];
        // 0x00000000ffff0000...: bytes 26..28 (little endian) hold 0xffff.
        hash[26] = 0xff;
        hash[27] = 0xff;
        assert!((hash_difficulty(&hash) - 1.0).abs() < 1e-9);
    }
}
