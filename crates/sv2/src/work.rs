//! The work arithmetic a V2 miner does: a job's coinbase and merkle root,
//! a header's hash. Pure, for the client and for tests that check a job.

use bitcoin::block::{Header, Version};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{BlockHash, CompactTarget, Target, TxMerkleNode};

/// The coinbase txid (internal byte order) of an extended job:
/// `prefix ‖ extranonce_prefix ‖ extranonce ‖ suffix`, non-witness bytes.
pub fn coinbase_txid(
    prefix: &[u8],
    extranonce_prefix: &[u8],
    extranonce: &[u8],
    suffix: &[u8],
) -> [u8; 32] {
    let mut engine = sha256d::Hash::engine();
    use bitcoin::hashes::HashEngine;
    engine.input(prefix);
    engine.input(extranonce_prefix);
    engine.input(extranonce);
    engine.input(suffix);
    sha256d::Hash::from_engine(engine).to_byte_array()
}

/// Folds the coinbase txid up its merkle path (deepest step first).
pub fn merkle_root(coinbase_txid: [u8; 32], path: &[[u8; 32]]) -> [u8; 32] {
    path.iter().fold(coinbase_txid, |root, node| {
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&root);
        both[32..].copy_from_slice(node);
        sha256d::Hash::hash(&both).to_byte_array()
    })
}

/// A header's fields as V2 sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    pub version: u32,
    /// Internal byte order, as `SetNewPrevHash` carries it.
    pub prev_hash: [u8; 32],
    pub merkle_root: [u8; 32],
    pub ntime: u32,
    pub nbits: u32,
    pub nonce: u32,
}

impl HeaderFields {
    pub fn header(&self) -> Header {
        Header {
            version: Version::from_consensus(self.version as i32),
            prev_blockhash: BlockHash::from_byte_array(self.prev_hash),
            merkle_root: TxMerkleNode::from_byte_array(self.merkle_root),
            time: self.ntime,
            bits: CompactTarget::from_consensus(self.nbits),
            nonce: self.nonce,
        }
    }

    pub fn hash(&self) -> BlockHash {
        self.header().block_hash()
    }

    /// The header meets its own nbits: it is a block.
    pub fn is_block(&self) -> bool {
        Target::from_compact(CompactTarget::from_consensus(self.nbits)).is_met_by(self.hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merkle_root_of_a_lone_coinbase_is_its_txid() {
        let txid = coinbase_txid(b"ab", b"c", b"d", b"ef");
        assert_eq!(txid, sha256d::Hash::hash(b"abcdef").to_byte_array());
        assert_eq!(merkle_root(txid, &[]), txid);
        let node = [7u8; 32];
        let mut both = txid.to_vec();
        both.extend_from_slice(&node);
        assert_eq!(
            merkle_root(txid, &[node]),
            sha256d::Hash::hash(&both).to_byte_array()
        );
    }
}
