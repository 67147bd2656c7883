//! Blocks a relay region sends over the relay link, checked before the
//! primary stores and submits them: the link is authenticated, but a
//! relay with a bug (or a stolen secret) must not fill the block store
//! with garbage or make this pool submit what is not a block.

use bitcoin::consensus::Decodable;

use super::FoundBlock;

/// A block as a relay sent it.
#[derive(Debug, Clone)]
pub struct RelayedBlock {
    /// The region that found it (from the link's handshake).
    pub origin: String,
    pub hash: String,
    pub height: u32,
    pub block_hex: String,
    pub user: String,
    pub worker: String,
    pub reward_sats: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayedBlockError {
    #[error("the block is not hex")]
    NotHex,
    #[error("the block does not decode: {0}")]
    Decode(String),
    #[error("the block's hash is {actual}, the relay said {claimed}")]
    HashMismatch { claimed: String, actual: String },
    #[error("the block's header does not meet its own target")]
    ProofOfWork,
    #[error("the block's coinbase says height {actual}, the relay said {claimed}")]
    HeightMismatch { claimed: u32, actual: u64 },
}

/// Decodes and checks the block: its hash is the one claimed, it meets the
/// target in its own header, and its coinbase's height (BIP34) is the one
/// claimed. Whether it extends the best chain is for the nodes to say.
pub fn check(block: RelayedBlock) -> Result<FoundBlock, RelayedBlockError> {
    let bytes = hex::decode(&block.block_hex).map_err(|_| RelayedBlockError::NotHex)?;
    let decoded = bitcoin::Block::consensus_decode(&mut bytes.as_slice())
        .map_err(|e| RelayedBlockError::Decode(e.to_string()))?;
    let hash = decoded.block_hash();
    if hash.to_string() != block.hash {
        return Err(RelayedBlockError::HashMismatch {
            claimed: block.hash,
            actual: hash.to_string(),
        });
    }
    decoded
        .header
        .validate_pow(decoded.header.target())
        .map_err(|_| RelayedBlockError::ProofOfWork)?;
    if let Ok(height) = decoded.bip34_block_height() {
        if height != u64::from(block.height) {
            return Err(RelayedBlockError::HeightMismatch {
                claimed: block.height,
                actual: height,
            });
        }
    }
    Ok(FoundBlock {
        height: block.height,
        hash,
        block_hex: block.block_hex,
        user: block.user,
        worker: block.worker,
        share_difficulty: decoded.header.difficulty_float(),
        network_difficulty: decoded.header.difficulty_float(),
        reward_sats: block.reward_sats,
        coinbase_sig: String::new(),
        origin: Some(block.origin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regtest's genesis block: a real block with a real proof of work.
    fn genesis() -> (bitcoin::Block, String) {
        let block = bitcoin::constants::genesis_block(bitcoin::Network::Regtest);
        let hex = bitcoin::consensus::encode::serialize_hex(&block);
        (block, hex)
    }

    fn relayed(hash: String, hex: String, height: u32) -> RelayedBlock {
        RelayedBlock {
            origin: "eu-west".into(),
            hash,
            height,
            block_hex: hex,
            user: "bcrt1qx".into(),
            worker: "rig".into(),
            reward_sats: 5_000_000_000,
        }
    }

    #[test]
    fn a_real_block_passes_with_its_origin() {
        let (block, hex) = genesis();
        let found = check(relayed(block.block_hash().to_string(), hex, 0)).unwrap();
        assert_eq!(found.hash, block.block_hash());
        assert_eq!(found.origin.as_deref(), Some("eu-west"));
    }

    #[test]
    fn garbage_a_wrong_hash_and_a_header_without_work_are_refused() {
        let (block, hex) = genesis();
        let hash = block.block_hash().to_string();
        assert_eq!(
            check(relayed(hash.clone(), "zz".into(), 0)).unwrap_err(),
            RelayedBlockError::NotHex
        );
        assert!(matches!(
            check(relayed(hash.clone(), "00".into(), 0)),
            Err(RelayedBlockError::Decode(_))
        ));
        assert!(matches!(
            check(relayed("00".repeat(32), hex, 0)),
            Err(RelayedBlockError::HashMismatch { .. })
        ));
        let mut no_work = block.clone();
        no_work.header.nonce = no_work.header.nonce.wrapping_add(1);
        while no_work.header.validate_pow(no_work.header.target()).is_ok() {
            no_work.header.nonce = no_work.header.nonce.wrapping_add(1);
        }
        let no_work_hex = bitcoin::consensus::encode::serialize_hex(&no_work);
        assert_eq!(
            check(relayed(no_work.block_hash().to_string(), no_work_hex, 0)).unwrap_err(),
            RelayedBlockError::ProofOfWork
        );
    }
}
