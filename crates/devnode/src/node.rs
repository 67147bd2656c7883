//! The blocking core of the node: libbitcoinkernel's chainstate, the wallet,
//! block assembly, internal mining and block submission. Every method here
//! may block (disk I/O, script validation, nonce grinding); async callers go
//! through `spawn_blocking`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target, Work};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxMerkleNode, TxOut, Witness, WitnessMerkleNode, Wtxid,
};
use bitcoinkernel::prelude::*;
use bitcoinkernel::{
    BlockTreeEntry, BlockValidationResult, BlockValidationStateRef, ChainType, ChainstateManager,
    Context, ContextBuilder, ProcessBlockResult, ValidationMode,
};
use parking_lot::Mutex;

use crate::wallet::{MempoolEntry, Wallet};
use crate::DevNodeError;

/// Regtest blocks halve their subsidy every 150 blocks.
const REGTEST_HALVING_INTERVAL: u32 = 150;
/// Regtest never retargets: every block carries the proof-of-work limit.
pub(crate) const REGTEST_BITS: u32 = 0x207f_ffff;
/// Version signalling no deployments, as Bitcoin Core's templates do.
const BLOCK_VERSION: i32 = 0x2000_0000;
/// How many block-checked results to remember; a reorg can check many blocks
/// in one `process_block` call, older entries are dropped first.
const CHECKED_LOG_CAPACITY: usize = 64;
/// Witness reserved value placed in every coinbase witness.
const WITNESS_RESERVED_VALUE: [u8; 32] = [0u8; 32];

/// What the kernel's block-checked callback reported for one block.
#[derive(Clone, Copy, Debug)]
struct CheckedBlock {
    hash: [u8; 32],
    mode: ValidationMode,
    result: BlockValidationResult,
}

/// Result of handing a block to the kernel, in submitblock's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SubmitOutcome {
    Accepted,
    Duplicate,
    /// Stored but not (yet) on the active chain, like Core's "inconclusive".
    Inconclusive,
    Rejected(String),
}

/// A block template before it is rendered as JSON or turned into a block.
pub(crate) struct Template {
    pub(crate) height: u32,
    pub(crate) previous_block_hash: BlockHash,
    pub(crate) bits: CompactTarget,
    pub(crate) min_time: u32,
    pub(crate) cur_time: u32,
    pub(crate) entries: Vec<MempoolEntry>,
    pub(crate) coinbase_value: Amount,
    pub(crate) mempool_sequence: u64,
}

impl Template {
    /// `default_witness_commitment`: the coinbase output committing to the
    /// template's witness merkle root (coinbase wtxid counted as zero).
    pub(crate) fn witness_commitment_script(&self) -> ScriptBuf {
        let wtxids = std::iter::once(Wtxid::all_zeros().to_raw_hash()).chain(
            self.entries
                .iter()
                .map(|entry| entry.tx.compute_wtxid().to_raw_hash()),
        );
        let root = bitcoin::merkle_tree::calculate_root(wtxids)
            .map(WitnessMerkleNode::from_raw_hash)
            .unwrap_or_else(WitnessMerkleNode::all_zeros);
        let commitment = Block::compute_witness_commitment(&root, &WITNESS_RESERVED_VALUE);
        let mut bytes = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
        bytes.extend_from_slice(commitment.as_byte_array());
        ScriptBuf::from_bytes(bytes)
    }
}

/// Summary of the active chain tip.
pub(crate) struct TipInfo {
    pub(crate) height: u32,
    pub(crate) hash: BlockHash,
    pub(crate) header: Header,
    pub(crate) median_time_past: u32,
    pub(crate) chain_work: Work,
}

/// A block read back from disk with its place in the chain.
pub(crate) struct StoredBlock {
    pub(crate) block: Block,
    pub(crate) height: u32,
    pub(crate) median_time_past: u32,
    pub(crate) chain_work: Work,
    /// Height of the active tip if this block is on the active chain.
    pub(crate) active_tip_height: Option<u32>,
    pub(crate) next_block_hash: Option<BlockHash>,
}

pub(crate) struct NodeCore {
    // Field order is drop order: the chainstate must shut down before its
    // context, and both before the temporary data directory is deleted.
    chainman: ChainstateManager,
    _context: Context,
    checked_log: Arc<Mutex<VecDeque<CheckedBlock>>>,
    /// Serialises every chain mutation with the wallet view that follows it.
    wallet: Mutex<Wallet>,
    template_transactions: usize,
    blocks_dir: PathBuf,
    mempool_sequence: std::sync::atomic::AtomicU64,
    /// Receives every new tip hash (ZMQ hashblock), if someone listens.
    tip_listener: Mutex<Option<tokio::sync::mpsc::Sender<BlockHash>>>,
    headers: HeaderCache,
    _temp_dir: Option<tempfile::TempDir>,
}

/// Headers of block-tree entries, read from the kernel once per block.
///
/// bitcoinkernel 0.3.2's `BlockTreeEntry::header()` wraps the header the C
/// API hands over (a fresh allocation the caller must destroy) in a
/// non-owning reference, so every call leaks ~80 bytes. The node asks for tip
/// headers on every RPC (median time past walks 11 of them): an hour-long
/// soak grew by megabytes. Caching bounds the leak to one header per block,
/// which the cache would hold anyway.
#[derive(Default)]
struct HeaderCache(Mutex<HashMap<BlockHash, Header>>);

impl HeaderCache {
    fn header(&self, entry: &BlockTreeEntry<'_>) -> Result<Header, DevNodeError> {
        let hash = entry_hash(entry);
        if let Some(header) = self.0.lock().get(&hash) {
            return Ok(*header);
        }
        let bytes = entry
            .header()
            .consensus_encode()
            .map_err(|error| DevNodeError::Kernel(format!("encoding header: {error}")))?;
        let header: Header = bitcoin::consensus::deserialize(&bytes)
            .map_err(|error| DevNodeError::Kernel(format!("decoding header: {error}")))?;
        self.0.lock().insert(hash, header);
        Ok(header)
    }

    fn time(&self, entry: &BlockTreeEntry<'_>) -> u32 {
        self.header(entry).map_or(0, |header| header.time)
    }

    /// Median of the timestamps of `entry` and its ten predecessors.
    fn median_time_past(&self, entry: &BlockTreeEntry<'_>) -> u32 {
        let mut times = Vec::with_capacity(11);
        let mut current = Some(*entry);
        while let Some(block) = current {
            if times.len() == 11 {
                break;
            }
            times.push(self.time(&block));
            current = block.prev();
        }
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }
}

impl NodeCore {
    /// Opens (or creates) the regtest chainstate under `data_dir`.
    pub(crate) fn open(
        data_dir: &Path,
        temp_dir: Option<tempfile::TempDir>,
        template_transactions: usize,
    ) -> Result<Self, DevNodeError> {
        let network_dir = data_dir.join("regtest");
        let blocks_dir = network_dir.join("blocks");
        std::fs::create_dir_all(&blocks_dir).map_err(|source| DevNodeError::Io {
            context: format!("creating {}", blocks_dir.display()),
            source,
        })?;
        let checked_log: Arc<Mutex<VecDeque<CheckedBlock>>> =
            Arc::new(Mutex::new(VecDeque::with_capacity(CHECKED_LOG_CAPACITY)));
        let log_for_callback = Arc::clone(&checked_log);
        let context = ContextBuilder::new()
            .chain_type(ChainType::Regtest)
            .with_block_checked_validation(
                move |block: bitcoinkernel::Block, state: BlockValidationStateRef<'_>| {
                    let mut log = log_for_callback.lock();
                    if log.len() >= CHECKED_LOG_CAPACITY {
                        log.pop_front();
                    }
                    log.push_back(CheckedBlock {
                        hash: block.hash().to_bytes(),
                        mode: state.mode(),
                        result: state.result(),
                    });
                },
            )
            .build()
            .map_err(|error| DevNodeError::Kernel(format!("creating context: {error}")))?;
        let data_dir_text = path_text(&network_dir)?;
        let blocks_dir_text = path_text(&blocks_dir)?;
        // A throw-away node keeps its databases in memory: faster, and
        // nothing would read them again anyway.
        let in_memory = temp_dir.is_some();
        let chainman = ChainstateManager::builder(&context, data_dir_text, blocks_dir_text)
            .map_err(|error| DevNodeError::Kernel(format!("chainstate options: {error}")))?
            .block_tree_db_in_memory(in_memory)
            .chainstate_db_in_memory(in_memory)
            .build()
            .map_err(|error| DevNodeError::Kernel(format!("opening chainstate: {error}")))?;
        chainman
            .import_blocks()
            .map_err(|error| DevNodeError::Kernel(format!("loading blocks: {error}")))?;
        let node = Self {
            chainman,
            _context: context,
            checked_log,
            wallet: Mutex::new(Wallet::new()?),
            template_transactions,
            blocks_dir,
            mempool_sequence: std::sync::atomic::AtomicU64::new(0),
            tip_listener: Mutex::new(None),
            headers: HeaderCache::default(),
            _temp_dir: temp_dir,
        };
        {
            let mut wallet = node.wallet.lock();
            node.sync_wallet(&mut wallet)?;
        }
        Ok(node)
    }

    /// Sends every future tip change to `listener`.
    pub(crate) fn set_tip_listener(&self, listener: tokio::sync::mpsc::Sender<BlockHash>) {
        *self.tip_listener.lock() = Some(listener);
    }

    fn notify_tip(&self, hash: BlockHash) {
        if let Some(listener) = self.tip_listener.lock().as_ref() {
            // Full queue: drop this notification rather than block validation.
            if listener.try_send(hash).is_err() {
                tracing::debug!(%hash, "tip notification dropped");
            }
        }
    }

    /// Mines internal blocks until the chain is `target_height` high.
    pub(crate) fn mine_to_height(&self, target_height: u32) -> Result<(), DevNodeError> {
        let mut wallet = self.wallet.lock();
        while self.tip()?.height < target_height {
            let height = self.tip()?.height.saturating_add(1);
            let script = wallet.mining_script(height);
            self.mine_one(&mut wallet, &script)?;
        }
        Ok(())
    }

    /// Mines `count` blocks paying `script_pubkey`, including the mempool.
    pub(crate) fn mine_blocks(
        &self,
        count: u32,
        script_pubkey: &ScriptBuf,
    ) -> Result<Vec<BlockHash>, DevNodeError> {
        let mut wallet = self.wallet.lock();
        (0..count)
            .map(|_| self.mine_one(&mut wallet, script_pubkey))
            .collect()
    }

    fn mine_one(
        &self,
        wallet: &mut Wallet,
        script_pubkey: &ScriptBuf,
    ) -> Result<BlockHash, DevNodeError> {
        let template = self.template_locked(wallet)?;
        let block = build_block(&template, script_pubkey)?;
        let hash = block.block_hash();
        match self.process_locked(wallet, &block)? {
            SubmitOutcome::Accepted => Ok(hash),
            other => Err(DevNodeError::Kernel(format!(
                "internally mined block {hash} not accepted: {other:?}"
            ))),
        }
    }

    /// The current block template (wallet transactions from the mempool).
    pub(crate) fn template(&self) -> Result<Template, DevNodeError> {
        let wallet = self.wallet.lock();
        self.template_locked(&wallet)
    }

    fn template_locked(&self, wallet: &Wallet) -> Result<Template, DevNodeError> {
        let tip = self.tip()?;
        let height = tip.height.saturating_add(1);
        let entries = wallet.mempool().to_vec();
        let fees = entries
            .iter()
            .try_fold(Amount::ZERO, |total, entry| total.checked_add(entry.fee))
            .ok_or_else(|| DevNodeError::Wallet("mempool fees overflow".to_string()))?;
        let coinbase_value = block_subsidy(height)
            .checked_add(fees)
            .ok_or_else(|| DevNodeError::Wallet("coinbase value overflow".to_string()))?;
        let min_time = tip.median_time_past.saturating_add(1);
        Ok(Template {
            height,
            previous_block_hash: tip.hash,
            bits: CompactTarget::from_consensus(REGTEST_BITS),
            min_time,
            cur_time: unix_now().max(min_time),
            entries,
            coinbase_value,
            mempool_sequence: self
                .mempool_sequence
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Validates and stores a block submitted from outside.
    pub(crate) fn submit_block(&self, block: &Block) -> Result<SubmitOutcome, DevNodeError> {
        let mut wallet = self.wallet.lock();
        let hash = block.block_hash();
        if let Some(entry) = self.chainman.get_block_tree_entry(&kernel_hash(&hash)) {
            if self.chainman.active_chain().contains(&entry) {
                return Ok(SubmitOutcome::Duplicate);
            }
        }
        self.process_locked(&mut wallet, block)
    }

    fn process_locked(
        &self,
        wallet: &mut Wallet,
        block: &Block,
    ) -> Result<SubmitOutcome, DevNodeError> {
        let bytes = bitcoin::consensus::serialize(block);
        let kernel_block = bitcoinkernel::Block::new(&bytes)
            .map_err(|error| DevNodeError::Kernel(format!("block decode: {error}")))?;
        let hash = block.block_hash();
        let tip_before = self.chainman.active_chain().tip().block_hash().to_bytes();
        self.checked_log.lock().clear();
        let result = self.chainman.process_block(&kernel_block);
        let checked = self
            .checked_log
            .lock()
            .iter()
            .rev()
            .find(|checked| checked.hash == hash.to_byte_array())
            .copied();
        let outcome = match result {
            ProcessBlockResult::NewBlock => {
                self.sync_wallet(wallet)?;
                let tip_after = self.chainman.active_chain().tip().block_hash().to_bytes();
                if tip_after != tip_before {
                    self.notify_tip(BlockHash::from_byte_array(tip_after));
                }
                let on_active_chain = self
                    .chainman
                    .get_block_tree_entry(&kernel_hash(&hash))
                    .is_some_and(|entry| self.chainman.active_chain().contains(&entry));
                match checked {
                    Some(checked) if checked.mode != ValidationMode::Valid => {
                        SubmitOutcome::Rejected(self.rejection_reason(
                            block,
                            Some(checked),
                            wallet.mempool(),
                        ))
                    }
                    _ if on_active_chain => SubmitOutcome::Accepted,
                    _ => SubmitOutcome::Inconclusive,
                }
            }
            ProcessBlockResult::Duplicate => SubmitOutcome::Duplicate,
            ProcessBlockResult::Rejected => {
                SubmitOutcome::Rejected(self.rejection_reason(block, checked, wallet.mempool()))
            }
        };
        Ok(outcome)
    }

    /// The kernel's C API only exposes a coarse validation result, so the
    /// common reject reasons are recomputed here in Bitcoin Core's order
    /// (header checks, merkle root, contextual checks).
    fn rejection_reason(
        &self,
        block: &Block,
        checked: Option<CheckedBlock>,
        mempool: &[MempoolEntry],
    ) -> String {
        if let Some(CheckedBlock {
            result: BlockValidationResult::CachedInvalid,
            ..
        }) = checked
        {
            return "duplicate-invalid".to_string();
        }
        let hash = block.block_hash();
        let target = Target::from_compact(block.header.bits);
        let pow_limit = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS));
        if target > pow_limit || !target.is_met_by(hash) {
            return "high-hash".to_string();
        }
        if !block.check_merkle_root() {
            return "bad-txnmrklroot".to_string();
        }
        if !matches!(block.txdata.first(), Some(tx) if tx.is_coinbase()) {
            return "bad-cb-missing".to_string();
        }
        let previous = self
            .chainman
            .get_block_tree_entry(&kernel_hash(&block.header.prev_blockhash));
        let Some(previous) = previous else {
            return "prev-blk-not-found".to_string();
        };
        if block.header.bits.to_consensus() != REGTEST_BITS {
            return "bad-diffbits".to_string();
        }
        if block.header.time <= self.headers.median_time_past(&previous) {
            return "time-too-old".to_string();
        }
        let expected_height = u64::try_from(previous.height()).unwrap_or(0) + 1;
        if block.bip34_block_height().ok() != Some(expected_height) {
            return "bad-cb-height".to_string();
        }
        if !block.check_witness_commitment() {
            return "bad-witness-merkle-match".to_string();
        }
        if let Some(fees) = known_fees(block, mempool) {
            let paid = block.txdata.first().map_or(Amount::ZERO, |coinbase| {
                coinbase.output.iter().fold(Amount::ZERO, |sum, output| {
                    sum.checked_add(output.value).unwrap_or(Amount::MAX)
                })
            });
            let allowed = u32::try_from(expected_height)
                .map_or(Amount::ZERO, block_subsidy)
                .checked_add(fees)
                .unwrap_or(Amount::MAX_MONEY);
            if paid > allowed {
                return "bad-cb-amount".to_string();
            }
        }
        match checked.map(|checked| checked.result) {
            Some(BlockValidationResult::InvalidPrev) => "bad-prevblk",
            Some(BlockValidationResult::TimeFuture) => "time-too-new",
            Some(BlockValidationResult::MissingPrev) => "prev-blk-not-found",
            Some(BlockValidationResult::Mutated) => "mutated",
            _ => "rejected",
        }
        .to_string()
    }

    /// Brings the wallet in line with the active chain (rescanning from
    /// genesis after a reorg) and refills the mempool.
    fn sync_wallet(&self, wallet: &mut Wallet) -> Result<(), DevNodeError> {
        let chain = self.chainman.active_chain();
        let tip_height = u32::try_from(chain.height())
            .map_err(|_| DevNodeError::Kernel("active chain has no tip".to_string()))?;
        let last_scanned = wallet.scanned_hashes().len().checked_sub(1);
        if let Some(last) = last_scanned {
            let still_active = chain.at_height(last).is_some_and(|entry| {
                wallet.scanned_hashes().get(last) == Some(&entry_hash(&entry))
            });
            if !still_active {
                wallet.reset_chain_view();
            }
        }
        let first = u32::try_from(wallet.scanned_hashes().len())
            .map_err(|_| DevNodeError::Kernel("chain too long".to_string()))?;
        for height in first..=tip_height {
            let entry = chain.at_height(height as usize).ok_or_else(|| {
                DevNodeError::Kernel(format!("active chain has no block at {height}"))
            })?;
            let block = self.read_entry(&entry)?;
            wallet.scan_block(height, &block);
        }
        let before: Vec<_> = wallet
            .mempool()
            .iter()
            .map(|e| e.tx.compute_txid())
            .collect();
        wallet.refresh_mempool(tip_height, self.template_transactions);
        let after: Vec<_> = wallet
            .mempool()
            .iter()
            .map(|e| e.tx.compute_txid())
            .collect();
        if before != after {
            self.mempool_sequence
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_entry(&self, entry: &BlockTreeEntry<'_>) -> Result<Block, DevNodeError> {
        let kernel_block = self
            .chainman
            .read_block_data(entry)
            .map_err(|error| DevNodeError::Kernel(format!("reading block: {error}")))?;
        let bytes = kernel_block
            .consensus_encode()
            .map_err(|error| DevNodeError::Kernel(format!("encoding block: {error}")))?;
        bitcoin::consensus::deserialize(&bytes)
            .map_err(|error| DevNodeError::Kernel(format!("decoding stored block: {error}")))
    }

    /// The active chain tip.
    pub(crate) fn tip(&self) -> Result<TipInfo, DevNodeError> {
        let chain = self.chainman.active_chain();
        let entry = chain.tip();
        Ok(TipInfo {
            height: u32::try_from(entry.height())
                .map_err(|_| DevNodeError::Kernel("negative tip height".to_string()))?,
            hash: entry_hash(&entry),
            header: self.headers.header(&entry)?,
            median_time_past: self.headers.median_time_past(&entry),
            chain_work: chain_work(&entry),
        })
    }

    /// Hash of the active-chain block at `height`.
    pub(crate) fn block_hash_at(&self, height: u32) -> Option<BlockHash> {
        let chain = self.chainman.active_chain();
        chain
            .at_height(height as usize)
            .map(|entry| entry_hash(&entry))
    }

    /// Reads any stored block (active chain or not).
    pub(crate) fn stored_block(
        &self,
        hash: &BlockHash,
    ) -> Result<Option<StoredBlock>, DevNodeError> {
        let Some(entry) = self.chainman.get_block_tree_entry(&kernel_hash(hash)) else {
            return Ok(None);
        };
        let block = match self.read_entry(&entry) {
            Ok(block) => block,
            // Header-only entries (block data never received) read as absent.
            Err(_) => return Ok(None),
        };
        let chain = self.chainman.active_chain();
        let height = u32::try_from(entry.height()).unwrap_or(0);
        let active = chain.contains(&entry);
        let active_tip_height = active.then(|| u32::try_from(chain.height()).unwrap_or(0));
        let next_block_hash = if active {
            chain
                .at_height(height as usize + 1)
                .map(|next| entry_hash(&next))
        } else {
            None
        };
        Ok(Some(StoredBlock {
            block,
            height,
            median_time_past: self.headers.median_time_past(&entry),
            chain_work: chain_work(&entry),
            active_tip_height,
            next_block_hash,
        }))
    }

    /// Number of transactions and total weight of the current template, as
    /// getmininginfo's currentblocktx / currentblockweight.
    pub(crate) fn mempool_summary(&self) -> (usize, u64) {
        let wallet = self.wallet.lock();
        let weight = wallet
            .mempool()
            .iter()
            .map(|entry| entry.tx.weight().to_wu())
            .sum();
        (wallet.mempool().len(), weight)
    }

    /// Timestamps and chain work of the last `span` blocks, for networkhashps.
    pub(crate) fn work_rate(&self, span: u32) -> f64 {
        let chain = self.chainman.active_chain();
        let tip = chain.tip();
        let tip_height = tip.height();
        let Some(start) = tip.ancestor(tip_height.saturating_sub(span as i32).max(0)) else {
            return 0.0;
        };
        let seconds = f64::from(self.headers.time(&tip)) - f64::from(self.headers.time(&start));
        if seconds <= 0.0 {
            return 0.0;
        }
        let blocks = f64::from(tip_height - start.height());
        let work_per_block = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS))
            .to_work()
            .log2()
            .exp2();
        blocks * work_per_block / seconds
    }

    /// Bytes used by block files, for getblockchaininfo.size_on_disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.blocks_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| entry.metadata().ok())
                    .filter(|metadata| metadata.is_file())
                    .map(|metadata| metadata.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Wallet addresses (P2PKH, P2WPKH) as strings.
    pub(crate) fn wallet_addresses(&self) -> (bitcoin::Address, bitcoin::Address) {
        let wallet = self.wallet.lock();
        (
            wallet.legacy_address().clone(),
            wallet.segwit_address().clone(),
        )
    }
}

/// Assembles a full block from `template` paying `script_pubkey`, and grinds
/// the nonce until it meets the (trivial) regtest target.
pub(crate) fn build_block(
    template: &Template,
    script_pubkey: &ScriptBuf,
) -> Result<Block, DevNodeError> {
    let coinbase_script = ScriptBuf::builder()
        .push_int(i64::from(template.height))
        .push_opcode(bitcoin::opcodes::OP_0)
        .into_script();
    let coinbase = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: coinbase_script,
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[WITNESS_RESERVED_VALUE]),
        }],
        output: vec![
            TxOut {
                value: template.coinbase_value,
                script_pubkey: script_pubkey.clone(),
            },
            TxOut {
                value: Amount::ZERO,
                script_pubkey: template.witness_commitment_script(),
            },
        ],
    };
    let txdata: Vec<Transaction> = std::iter::once(coinbase)
        .chain(template.entries.iter().map(|entry| entry.tx.clone()))
        .collect();
    let mut block = Block {
        header: Header {
            version: BlockVersion::from_consensus(BLOCK_VERSION),
            prev_blockhash: template.previous_block_hash,
            merkle_root: TxMerkleNode::all_zeros(),
            time: template.cur_time,
            bits: template.bits,
            nonce: 0,
        },
        txdata,
    };
    block.header.merkle_root = block
        .compute_merkle_root()
        .ok_or_else(|| DevNodeError::Kernel("empty block".to_string()))?;
    grind_nonce(&mut block.header);
    Ok(block)
}

/// Searches nonces (bumping the time if all fail) until the header's hash
/// meets its own target.
pub(crate) fn grind_nonce(header: &mut Header) {
    let target = Target::from_compact(header.bits);
    loop {
        for nonce in 0..=u32::MAX {
            header.nonce = nonce;
            if target.is_met_by(header.block_hash()) {
                return;
            }
        }
        header.time = header.time.wrapping_add(1);
    }
}

/// Total fees of `block` if every non-coinbase transaction is one of the
/// wallet's mempool transactions (the only fees this node can know without
/// the UTXO set).
fn known_fees(block: &Block, mempool: &[MempoolEntry]) -> Option<Amount> {
    block
        .txdata
        .iter()
        .skip(1)
        .try_fold(Amount::ZERO, |sum, tx| {
            let txid = tx.compute_txid();
            let entry = mempool
                .iter()
                .find(|entry| entry.tx.compute_txid() == txid)?;
            sum.checked_add(entry.fee)
        })
}

/// Regtest block subsidy at `height`.
pub(crate) fn block_subsidy(height: u32) -> Amount {
    let halvings = height / REGTEST_HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000u64) >> halvings)
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn path_text(path: &Path) -> Result<&str, DevNodeError> {
    path.to_str().ok_or_else(|| {
        DevNodeError::InvalidOptions(format!("path {} is not UTF-8", path.display()))
    })
}

fn kernel_hash(hash: &BlockHash) -> bitcoinkernel::BlockHash {
    bitcoinkernel::BlockHash::from(hash.to_byte_array())
}

fn entry_hash(entry: &BlockTreeEntry<'_>) -> BlockHash {
    BlockHash::from_byte_array(entry.block_hash().to_bytes())
}

/// Total work up to `entry`; regtest has a constant target so every block
/// (genesis included) adds the same work.
fn chain_work(entry: &BlockTreeEntry<'_>) -> Work {
    let per_block = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS)).to_work();
    let blocks = u64::try_from(entry.height()).unwrap_or(0) + 1;
    // Work has no multiplication; doubling-and-add keeps this O(log n).
    let mut total: Option<Work> = None;
    let mut addend = per_block;
    let mut remaining = blocks;
    while remaining > 0 {
        if remaining & 1 == 1 {
            total = Some(match total {
                Some(sum) => sum + addend,
                None => addend,
            });
        }
        addend = addend + addend;
        remaining >>= 1;
    }
    total.unwrap_or(per_block)
}
