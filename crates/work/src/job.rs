//! Per-template job data shared by all miners, and share checking.

use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, CompactTarget, Target, VarInt};
use sha2::Digest;

use crate::coinbase::CoinbaseParts;
use crate::difficulty::share_difficulty;
use crate::hashing::{finish_sha256d, merkle_node, sha256d_header};
use crate::template::{decode_hex_array, Template};

/// Why a job or coinbase could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkError {
    #[error("extranonce length {0} is not in 1..=75 bytes")]
    ExtranonceLength(usize),
    #[error("coinbase scriptSig needs {needed} bytes even with an empty tag, the limit is 100")]
    ScriptSigTooLong { needed: usize },
    #[error("invalid coinbase: {0}")]
    InvalidCoinbase(String),
    #[error("invalid notify field {field:?}: {reason}")]
    InvalidNotify { field: String, reason: String },
}

/// The fields of a recorded `mining.notify`, as hex strings in stratum order.
#[derive(Debug, Clone, Copy)]
pub struct NotifyParts<'a> {
    pub height: u32,
    pub prevhash: &'a str,
    pub merkle_branch: &'a [String],
    pub version: &'a str,
    pub nbits: &'a str,
    pub ntime: &'a str,
}

/// Data built once per template and shared (via `Arc`) by every miner's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTemplate {
    /// The template this was built from (`None` when built from notify parts).
    pub template: Option<Arc<Template>>,
    pub height: u32,
    /// Block version before any version rolling.
    pub version: u32,
    pub bits: CompactTarget,
    /// ntime sent in notify (the template's curtime).
    pub cur_time: u32,
    /// Earliest ntime the node accepts (`cur_time` when unknown).
    pub min_time: u32,
    pub previous_block_hash: BlockHash,
    pub network_target: Target,
    /// Merkle branch for the coinbase at index 0, internal byte order.
    pub merkle_branch: Vec<[u8; 32]>,
    /// Notify fields, ready to send.
    pub prevhash_hex: String,
    pub merkle_branch_hex: Vec<String>,
    pub version_hex: String,
    pub nbits_hex: String,
    pub ntime_hex: String,
    /// Non-coinbase transactions, consensus-serialized back to back.
    transactions_data: Vec<u8>,
    transaction_count: usize,
}

impl JobTemplate {
    /// Builds the shared job data for a template.
    pub fn new(template: Arc<Template>) -> JobTemplate {
        let txids: Vec<[u8; 32]> = template
            .transactions
            .iter()
            .map(|tx| tx.txid.to_byte_array())
            .collect();
        let merkle_branch = coinbase_merkle_branch(txids);
        let data_len = template.transactions.iter().map(|tx| tx.data.len()).sum();
        let mut transactions_data = Vec::with_capacity(data_len);
        for tx in &template.transactions {
            transactions_data.extend_from_slice(&tx.data);
        }
        let version = template.version as u32;
        let previous_block_hash = template.previous_block_hash;
        JobTemplate {
            height: template.height,
            version,
            bits: template.bits,
            cur_time: template.cur_time,
            min_time: template.min_time,
            previous_block_hash,
            network_target: template.target,
            merkle_branch_hex: merkle_branch.iter().map(hex::encode).collect(),
            merkle_branch,
            prevhash_hex: hex::encode(stratum_prevhash(&previous_block_hash.to_byte_array())),
            version_hex: format!("{version:08x}"),
            nbits_hex: format!("{:08x}", template.bits.to_consensus()),
            ntime_hex: format!("{:08x}", template.cur_time),
            transaction_count: template.transactions.len(),
            transactions_data,
            template: Some(template),
        }
    }

    /// Rebuilds job data from a recorded `mining.notify` plus the block's
    /// non-coinbase transactions (consensus bytes), e.g. for tests.
    pub fn from_notify_parts(
        parts: &NotifyParts<'_>,
        transactions: &[Vec<u8>],
    ) -> Result<JobTemplate, WorkError> {
        let bad = |field: &str, reason: String| WorkError::InvalidNotify {
            field: field.to_owned(),
            reason,
        };
        let prevhash = decode_hex_array::<32>(parts.prevhash).map_err(|e| bad("prevhash", e))?;
        let merkle_branch = parts
            .merkle_branch
            .iter()
            .map(|h| decode_hex_array::<32>(h).map_err(|e| bad("merkle_branch", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let word = |field: &str, text: &str| {
            decode_hex_array::<4>(text)
                .map(u32::from_be_bytes)
                .map_err(|e| bad(field, e))
        };
        let version = word("version", parts.version)?;
        let bits = CompactTarget::from_consensus(word("nbits", parts.nbits)?);
        let ntime = word("ntime", parts.ntime)?;
        // The swap is its own inverse: notify order back to internal order.
        let previous_block_hash = BlockHash::from_byte_array(stratum_prevhash(&prevhash));
        Ok(JobTemplate {
            template: None,
            height: parts.height,
            version,
            bits,
            cur_time: ntime,
            min_time: ntime,
            previous_block_hash,
            network_target: Target::from_compact(bits),
            merkle_branch_hex: merkle_branch.iter().map(hex::encode).collect(),
            merkle_branch,
            prevhash_hex: parts.prevhash.to_ascii_lowercase(),
            version_hex: format!("{version:08x}"),
            nbits_hex: format!("{:08x}", bits.to_consensus()),
            ntime_hex: format!("{ntime:08x}"),
            transactions_data: transactions.concat(),
            transaction_count: transactions.len(),
        })
    }

    /// Number of non-coinbase transactions.
    pub fn transaction_count(&self) -> usize {
        self.transaction_count
    }

    /// The 80-byte header for a merkle root and the miner's fields.
    fn header(&self, version: u32, merkle_root: &[u8; 32], ntime: u32, nonce: u32) -> [u8; 80] {
        let mut header = [0u8; 80];
        header[..4].copy_from_slice(&version.to_le_bytes());
        header[4..36].copy_from_slice(self.previous_block_hash.as_byte_array());
        header[36..68].copy_from_slice(merkle_root);
        header[68..72].copy_from_slice(&ntime.to_le_bytes());
        header[72..76].copy_from_slice(&self.bits.to_consensus().to_le_bytes());
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        header
    }
}

/// Prevhash as ckpool and cpuminer send it: the 32 internal-order bytes with
/// each 4-byte word reversed.
fn stratum_prevhash(bytes: &[u8; 32]) -> [u8; 32] {
    let mut out = *bytes;
    for word in out.chunks_exact_mut(4) {
        word.reverse();
    }
    out
}

/// Merkle branch proving the transaction at index 0 (the coinbase), given the
/// txids of every other transaction in block order.
fn coinbase_merkle_branch(mut level: Vec<[u8; 32]>) -> Vec<[u8; 32]> {
    let mut branch = Vec::new();
    while let Some(first) = level.first().copied() {
        branch.push(first);
        // With the coinbase slot in front the level has len + 1 entries; an
        // odd count duplicates its last entry.
        if level.len() & 1 == 0 {
            if let Some(last) = level.last().copied() {
                level.push(last);
            }
        }
        level = level
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(pair_hash)
            .collect();
    }
    branch
}

fn pair_hash(pair: &[[u8; 32]]) -> [u8; 32] {
    match pair {
        [left, right] => merkle_node(left, right),
        _ => [0u8; 32], // chunks_exact(2) never yields another shape
    }
}

/// Result of hashing one submitted share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShareCheck {
    pub hash: BlockHash,
    /// diff1 / hash; compare with the miner's difficulty.
    pub share_difficulty: f64,
    /// The share is a block.
    pub meets_network: bool,
}

/// One miner's job: shared template data plus that user's coinbase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub template: Arc<JobTemplate>,
    pub coinbase: Arc<CoinbaseParts>,
}

impl Job {
    /// Hashes a share. `version` is the final header version (after any
    /// version rolling); `ntime` and `nonce` are the submitted hex read as
    /// big-endian integers. The caller checks the extranonce2 length.
    pub fn check_share(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version: u32,
    ) -> ShareCheck {
        let root = self.merkle_root(extranonce1, extranonce2);
        self.check_share_with_root(&root, ntime, nonce, version)
    }

    /// As [`Job::check_share`] with the merkle root already computed by
    /// [`Job::merkle_root`]: miners roll nonce and version many times per
    /// extranonce2, so a pool can reuse the root (most of a share's hashing
    /// on large templates) for every share of the same extranonce2.
    pub fn check_share_with_root(
        &self,
        merkle_root: &[u8; 32],
        ntime: u32,
        nonce: u32,
        version: u32,
    ) -> ShareCheck {
        let header = self.template.header(version, merkle_root, ntime, nonce);
        let hash = BlockHash::from_byte_array(sha256d_header(&header));
        ShareCheck {
            hash,
            share_difficulty: share_difficulty(&hash),
            meets_network: self.template.network_target.is_met_by(hash),
        }
    }

    /// The merkle root (internal byte order) of the block for these extranonces.
    pub fn merkle_root(&self, extranonce1: &[u8], extranonce2: &[u8]) -> [u8; 32] {
        let mut root = self.coinbase_hash(extranonce1, extranonce2);
        for sibling in &self.template.merkle_branch {
            root = merkle_node(&root, sibling);
        }
        root
    }

    /// The coinbase txid's bytes (internal order) for these extranonces.
    pub fn coinbase_hash(&self, extranonce1: &[u8], extranonce2: &[u8]) -> [u8; 32] {
        let mut engine = self.coinbase.coinb1_state().clone();
        engine.update(extranonce1);
        engine.update(extranonce2);
        engine.update(&self.coinbase.coinb2);
        finish_sha256d(engine)
    }

    /// The 80-byte block header for a share.
    pub fn header_for(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version: u32,
    ) -> [u8; 80] {
        let root = self.merkle_root(extranonce1, extranonce2);
        self.template.header(version, &root, ntime, nonce)
    }

    /// The full block for a share: header, transaction count, coinbase (with
    /// its witness reserved value when committed to), template transactions.
    pub fn block_bytes(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version: u32,
    ) -> Vec<u8> {
        let header = self.header_for(extranonce1, extranonce2, ntime, nonce, version);
        let count = VarInt(self.template.transaction_count as u64 + 1);
        let mut block = Vec::with_capacity(
            80 + 9
                + self.coinbase.coinb1.len()
                + extranonce1.len()
                + extranonce2.len()
                + self.coinbase.coinb2.len()
                + 40
                + self.template.transactions_data.len(),
        );
        block.extend_from_slice(&header);
        block.extend_from_slice(&bitcoin::consensus::serialize(&count));
        self.coinbase
            .write_block_coinbase(&mut block, extranonce1, extranonce2);
        block.extend_from_slice(&self.template.transactions_data);
        block
    }

    /// `block_bytes` as hex, for `submitblock`.
    pub fn block_hex(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version: u32,
    ) -> String {
        hex::encode(self.block_bytes(extranonce1, extranonce2, ntime, nonce, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// Plain merkle root over all leaves (Bitcoin's odd-duplicate rule).
    fn full_root(mut level: Vec<[u8; 32]>) -> [u8; 32] {
        while level.len() > 1 {
            if level.len() & 1 == 1 {
                level.push(*level.last().unwrap());
            }
            level = level.chunks_exact(2).map(pair_hash).collect();
        }
        level[0]
    }

    #[test]
    fn branch_reproduces_the_full_merkle_root() {
        for others in 0..=17u8 {
            let coinbase = [0xcc; 32];
            let txids: Vec<_> = (1..=others).map(leaf).collect();
            let mut root = coinbase;
            for sibling in coinbase_merkle_branch(txids.clone()) {
                root = merkle_node(&root, &sibling);
            }
            let mut all = vec![coinbase];
            all.extend(txids);
            assert_eq!(root, full_root(all), "with {others} other transactions");
        }
    }

    #[test]
    fn prevhash_swaps_each_word() {
        let mut internal = [0u8; 32];
        for (i, b) in internal.iter_mut().enumerate() {
            *b = i as u8;
        }
        let swapped = stratum_prevhash(&internal);
        assert_eq!(&swapped[..8], &[3, 2, 1, 0, 7, 6, 5, 4]);
        assert_eq!(stratum_prevhash(&swapped), internal);
    }
}
