//! The node's own tiny wallet: two deterministic keys (P2PKH and P2WPKH), the
//! UTXOs found by scanning connected blocks, and a mempool of signed
//! transactions spending those UTXOs so that block templates carry real
//! legacy and segwit transactions.

use std::collections::{BTreeMap, HashSet};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::key::{CompressedPublicKey, PrivateKey, PublicKey};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Witness,
};

use crate::DevNodeError;

/// Blocks a coinbase output must wait before it can be spent (consensus rule).
pub(crate) const COINBASE_MATURITY: u32 = 100;

/// Which of the two wallet keys an output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Legacy,
    Segwit,
}

struct WalletKey {
    secret: SecretKey,
    public: PublicKey,
    script_pubkey: ScriptBuf,
    address: Address,
}

/// A confirmed output paying one of the wallet's scripts.
#[derive(Clone, Debug)]
struct WalletCoin {
    txout: TxOut,
    height: u32,
    is_coinbase: bool,
}

/// A wallet transaction waiting in the mempool for a block.
#[derive(Clone, Debug)]
pub(crate) struct MempoolEntry {
    pub(crate) tx: Transaction,
    pub(crate) fee: Amount,
    /// The outputs spent by `tx`, in input order (needed for sigop counting).
    pub(crate) prevouts: Vec<TxOut>,
}

impl MempoolEntry {
    /// Sigop cost as Bitcoin Core reports it in getblocktemplate: legacy sigops
    /// (scriptSigs and output scripts) count four, witness sigops count one.
    pub(crate) fn sigop_cost(&self) -> u64 {
        let legacy: usize = self
            .tx
            .input
            .iter()
            .map(|input| input.script_sig.count_sigops_legacy())
            .chain(
                self.tx
                    .output
                    .iter()
                    .map(|output| output.script_pubkey.count_sigops_legacy()),
            )
            .sum();
        let witness = self
            .prevouts
            .iter()
            .filter(|prevout| prevout.script_pubkey.is_p2wpkh())
            .count();
        (legacy as u64) * 4 + witness as u64
    }
}

pub(crate) struct Wallet {
    secp: Secp256k1<All>,
    legacy: WalletKey,
    segwit: WalletKey,
    coins: BTreeMap<OutPoint, WalletCoin>,
    /// Hash of every scanned block, indexed by height, to detect reorgs.
    scanned: Vec<BlockHash>,
    mempool: Vec<MempoolEntry>,
    /// Counts created transactions; varies fees so templates are not uniform.
    created: u64,
}

impl Wallet {
    /// Creates the wallet with keys derived from fixed labels, so a node
    /// restarted on the same data directory finds its coins again.
    pub(crate) fn new() -> Result<Self, DevNodeError> {
        let secp = Secp256k1::new();
        let legacy = derive_key(&secp, "tbg-devnode/wallet/p2pkh", KeyKind::Legacy)?;
        let segwit = derive_key(&secp, "tbg-devnode/wallet/p2wpkh", KeyKind::Segwit)?;
        Ok(Self {
            secp,
            legacy,
            segwit,
            coins: BTreeMap::new(),
            scanned: Vec::new(),
            mempool: Vec::new(),
            created: 0,
        })
    }

    pub(crate) fn legacy_address(&self) -> &Address {
        &self.legacy.address
    }

    pub(crate) fn segwit_address(&self) -> &Address {
        &self.segwit.address
    }

    /// Address for the internally mined block at `height`: alternates between
    /// the two keys so both kinds of coins exist.
    pub(crate) fn mining_script(&self, height: u32) -> ScriptBuf {
        if height & 1 == 0 {
            self.legacy.script_pubkey.clone()
        } else {
            self.segwit.script_pubkey.clone()
        }
    }

    pub(crate) fn scanned_hashes(&self) -> &[BlockHash] {
        &self.scanned
    }

    pub(crate) fn mempool(&self) -> &[MempoolEntry] {
        &self.mempool
    }

    /// Forgets everything learnt from blocks (used after a reorg; the caller
    /// rescans from genesis).
    pub(crate) fn reset_chain_view(&mut self) {
        self.coins.clear();
        self.scanned.clear();
    }

    /// Applies a block connected at `height` (must be `scanned_hashes().len()`).
    pub(crate) fn scan_block(&mut self, height: u32, block: &Block) {
        for tx in &block.txdata {
            let is_coinbase = tx.is_coinbase();
            if !is_coinbase {
                for input in &tx.input {
                    self.coins.remove(&input.previous_output);
                }
            }
            let txid = tx.compute_txid();
            for (vout, output) in tx.output.iter().enumerate() {
                if self.key_kind(&output.script_pubkey).is_some() {
                    let Ok(vout) = u32::try_from(vout) else {
                        continue;
                    };
                    self.coins.insert(
                        OutPoint { txid, vout },
                        WalletCoin {
                            txout: output.clone(),
                            height,
                            is_coinbase,
                        },
                    );
                }
            }
        }
        self.scanned.push(block.block_hash());
    }

    /// Drops mempool transactions that were confirmed or conflicted (some
    /// input is neither a confirmed wallet coin nor an output of an earlier
    /// mempool transaction), then creates new ones up to `target` spending
    /// coins that are mature for a block at `tip_height + 1`.
    pub(crate) fn refresh_mempool(&mut self, tip_height: u32, target: usize) {
        let mut kept: Vec<MempoolEntry> = Vec::with_capacity(self.mempool.len());
        let mut spent_in_mempool: HashSet<OutPoint> = HashSet::new();
        for entry in std::mem::take(&mut self.mempool) {
            let inputs_available = entry.tx.input.iter().all(|input| {
                let outpoint = input.previous_output;
                !spent_in_mempool.contains(&outpoint)
                    && (self.coins.contains_key(&outpoint)
                        || kept.iter().any(|parent| {
                            parent.tx.compute_txid() == outpoint.txid
                                && (outpoint.vout as usize) < parent.tx.output.len()
                        }))
            });
            if inputs_available {
                spent_in_mempool.extend(entry.tx.input.iter().map(|input| input.previous_output));
                kept.push(entry);
            }
        }
        self.mempool = kept;

        let spend_height = tip_height.saturating_add(1);
        while self.mempool.len() < target {
            let slot = self.mempool.len();
            // Every fourth transaction (when possible) spends an unconfirmed
            // parent, so templates exercise `depends`.
            let created = if slot % 4 == 2 {
                self.create_child_spend()
                    .or_else(|| self.create_confirmed_spend(spend_height, slot))
            } else {
                self.create_confirmed_spend(spend_height, slot)
                    .or_else(|| self.create_child_spend())
            };
            match created {
                Some(entry) => self.mempool.push(entry),
                None => break,
            }
        }
    }

    fn key_kind(&self, script_pubkey: &ScriptBuf) -> Option<KeyKind> {
        if *script_pubkey == self.legacy.script_pubkey {
            Some(KeyKind::Legacy)
        } else if *script_pubkey == self.segwit.script_pubkey {
            Some(KeyKind::Segwit)
        } else {
            None
        }
    }

    fn spent_in_mempool(&self) -> HashSet<OutPoint> {
        self.mempool
            .iter()
            .flat_map(|entry| entry.tx.input.iter().map(|input| input.previous_output))
            .collect()
    }

    /// Spends a mature confirmed coin; even slots prefer the P2PKH key, odd
    /// slots the P2WPKH key, falling back to whichever is available.
    fn create_confirmed_spend(&mut self, spend_height: u32, slot: usize) -> Option<MempoolEntry> {
        let spent = self.spent_in_mempool();
        let preferred = if slot & 1 == 0 {
            KeyKind::Legacy
        } else {
            KeyKind::Segwit
        };
        let candidates: Vec<(OutPoint, TxOut)> = self
            .coins
            .iter()
            .filter(|(outpoint, coin)| {
                !spent.contains(outpoint)
                    && (!coin.is_coinbase
                        || spend_height.saturating_sub(coin.height) >= COINBASE_MATURITY)
            })
            .map(|(outpoint, coin)| (*outpoint, coin.txout.clone()))
            .collect();
        let chosen = candidates
            .iter()
            .find(|(_, txout)| self.key_kind(&txout.script_pubkey) == Some(preferred))
            .or_else(|| candidates.first())?
            .clone();
        self.sign_spend(chosen.0, chosen.1)
    }

    /// Spends output 0 of a mempool transaction whose own inputs are all
    /// confirmed, creating a parent/child chain of depth two at most.
    fn create_child_spend(&mut self) -> Option<MempoolEntry> {
        let spent = self.spent_in_mempool();
        let parent = self.mempool.iter().find(|entry| {
            let outpoint = OutPoint {
                txid: entry.tx.compute_txid(),
                vout: 0,
            };
            !spent.contains(&outpoint)
                && entry
                    .tx
                    .input
                    .iter()
                    .all(|input| self.coins.contains_key(&input.previous_output))
        })?;
        let outpoint = OutPoint {
            txid: parent.tx.compute_txid(),
            vout: 0,
        };
        let txout = parent.tx.output.first()?.clone();
        self.sign_spend(outpoint, txout)
    }

    /// Builds and signs a one-input one-output transaction paying the coin
    /// (minus a fee) to the wallet's *other* key.
    fn sign_spend(&mut self, outpoint: OutPoint, prevout: TxOut) -> Option<MempoolEntry> {
        let kind = self.key_kind(&prevout.script_pubkey)?;
        let fee = Amount::from_sat(10_000 + 1_000 * (self.created % 8));
        let value = prevout.value.checked_sub(fee)?;
        if value < Amount::from_sat(10_000) {
            return None;
        }
        let (signing_key, destination) = match kind {
            KeyKind::Legacy => (&self.legacy, &self.segwit),
            KeyKind::Segwit => (&self.segwit, &self.legacy),
        };
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value,
                script_pubkey: destination.script_pubkey.clone(),
            }],
        };
        let sighash_type = EcdsaSighashType::All;
        let mut cache = SighashCache::new(&tx);
        let message = match kind {
            KeyKind::Legacy => {
                let sighash = cache
                    .legacy_signature_hash(0, &prevout.script_pubkey, sighash_type.to_u32())
                    .ok()?;
                Message::from_digest(sighash.to_byte_array())
            }
            KeyKind::Segwit => {
                let sighash = cache
                    .p2wpkh_signature_hash(0, &prevout.script_pubkey, prevout.value, sighash_type)
                    .ok()?;
                Message::from_digest(sighash.to_byte_array())
            }
        };
        let signature = bitcoin::ecdsa::Signature {
            signature: self.secp.sign_ecdsa(&message, &signing_key.secret),
            sighash_type,
        };
        let input = tx.input.first_mut()?;
        match kind {
            KeyKind::Legacy => {
                input.script_sig = ScriptBuf::builder()
                    .push_slice(signature.serialize())
                    .push_key(&signing_key.public)
                    .into_script();
            }
            KeyKind::Segwit => {
                input.witness = Witness::p2wpkh(&signature, &signing_key.public.inner);
            }
        }
        self.created = self.created.wrapping_add(1);
        Some(MempoolEntry {
            tx,
            fee,
            prevouts: vec![prevout],
        })
    }
}

fn derive_key(
    secp: &Secp256k1<All>,
    label: &str,
    kind: KeyKind,
) -> Result<WalletKey, DevNodeError> {
    let digest = sha256::Hash::hash(label.as_bytes());
    let secret = SecretKey::from_slice(digest.as_byte_array())
        .map_err(|error| DevNodeError::Wallet(format!("deriving key {label}: {error}")))?;
    let private = PrivateKey::new(secret, Network::Regtest);
    let public = PublicKey::from_private_key(secp, &private);
    let address = match kind {
        KeyKind::Legacy => Address::p2pkh(public, Network::Regtest),
        KeyKind::Segwit => {
            let compressed = CompressedPublicKey::from_private_key(secp, &private)
                .map_err(|error| DevNodeError::Wallet(format!("compressing key: {error}")))?;
            Address::p2wpkh(&compressed, Network::Regtest)
        }
    };
    Ok(WalletKey {
        secret,
        public,
        script_pubkey: address.script_pubkey(),
        address,
    })
}
