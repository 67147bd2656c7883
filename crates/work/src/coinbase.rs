//! Per-user coinbase halves: in solo mode every user's block pays its own address.

use bitcoin::absolute::LockTime;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, Script, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use sha2::{Digest, Sha256};

use crate::job::WorkError;
use crate::template::{is_witness_commitment, Template};

/// Consensus limit on a coinbase scriptSig (Core's bad-cb-length).
pub const MAX_COINBASE_SCRIPT_SIG_LEN: usize = 100;

/// Bytes before the scriptSig length: version, input count, null prevout.
const BEFORE_SCRIPT_SIG_LEN: usize = 4 + 1 + 36;

/// The coinbase around the miner's extranonce: coinb1 || extranonce1 ||
/// extranonce2 || coinb2 is the coinbase serialized without witness.
#[derive(Debug, Clone)]
pub struct CoinbaseParts {
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    /// True when an output carries a BIP141 witness commitment, so the block
    /// must serialize the coinbase with the 32-byte witness reserved value.
    pub has_witness_commitment: bool,
    /// SHA-256 state after absorbing coinb1, so a share hashes only the rest.
    coinb1_state: Sha256,
}

impl PartialEq for CoinbaseParts {
    fn eq(&self, other: &Self) -> bool {
        self.coinb1 == other.coinb1 && self.coinb2 == other.coinb2
    }
}
impl Eq for CoinbaseParts {}

impl CoinbaseParts {
    /// Wraps coinbase halves (e.g. from a recorded `mining.notify`) that,
    /// around `extranonce_len` bytes, form a coinbase without witness.
    pub fn new(
        coinb1: Vec<u8>,
        coinb2: Vec<u8>,
        extranonce_len: usize,
    ) -> Result<CoinbaseParts, WorkError> {
        let mut bytes = Vec::with_capacity(coinb1.len() + extranonce_len + coinb2.len());
        bytes.extend_from_slice(&coinb1);
        bytes.resize(coinb1.len() + extranonce_len, 0);
        bytes.extend_from_slice(&coinb2);
        let tx: Transaction = deserialize(&bytes)
            .map_err(|e| WorkError::InvalidCoinbase(format!("does not decode: {e}")))?;
        if !tx.is_coinbase() {
            return Err(WorkError::InvalidCoinbase(
                "not a coinbase transaction".into(),
            ));
        }
        // Stratum coinbases carry no witness; segwit encoding would move the extranonce.
        if serialize(&tx).len() != bytes.len() {
            return Err(WorkError::InvalidCoinbase(
                "serialized with a witness".into(),
            ));
        }
        let has_witness_commitment = tx
            .output
            .iter()
            .any(|out| is_witness_commitment(out.script_pubkey.as_bytes()));
        let mut coinb1_state = Sha256::new();
        coinb1_state.update(&coinb1);
        Ok(CoinbaseParts {
            coinb1,
            coinb2,
            has_witness_commitment,
            coinb1_state,
        })
    }

    /// Hash state after coinb1 (cloned per share, no allocation).
    pub(crate) fn coinb1_state(&self) -> &Sha256 {
        &self.coinb1_state
    }

    /// The coinbase without witness, as the stratum merkle root hashes it.
    pub fn assemble(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.coinb1.len() + extranonce1.len() + extranonce2.len() + self.coinb2.len(),
        );
        self.write_to(&mut out, extranonce1, extranonce2);
        out
    }

    /// Appends the coinbase as the block carries it: with the segwit marker,
    /// flag and 32-byte zero witness reserved value when committed to.
    pub(crate) fn write_block_coinbase(
        &self,
        out: &mut Vec<u8>,
        extranonce1: &[u8],
        extranonce2: &[u8],
    ) {
        if !self.has_witness_commitment || self.coinb1.len() < 4 || self.coinb2.len() < 4 {
            self.write_to(out, extranonce1, extranonce2);
            return;
        }
        let (version, after_version) = self.coinb1.split_at(4);
        let (before_locktime, locktime) = self.coinb2.split_at(self.coinb2.len() - 4);
        out.extend_from_slice(version);
        out.extend_from_slice(&[0x00, 0x01]); // segwit marker and flag
        out.extend_from_slice(after_version);
        out.extend_from_slice(extranonce1);
        out.extend_from_slice(extranonce2);
        out.extend_from_slice(before_locktime);
        out.extend_from_slice(&[0x01, 0x20]); // one witness item of 32 bytes
        out.extend_from_slice(&[0u8; 32]);
        out.extend_from_slice(locktime);
    }

    fn write_to(&self, out: &mut Vec<u8>, extranonce1: &[u8], extranonce2: &[u8]) {
        out.extend_from_slice(&self.coinb1);
        out.extend_from_slice(extranonce1);
        out.extend_from_slice(extranonce2);
        out.extend_from_slice(&self.coinb2);
    }
}

/// Builds the coinbase halves for one user: version 2, one null-prevout input
/// whose scriptSig is the BIP34 height, one push of the tag (`pool_tag`, then
/// `/` and `user_sig` when given; truncated to fit 100 bytes) and one push of
/// extranonce1 || extranonce2; outputs are the full value to `payout_script`,
/// then the template's witness commitment when it has one; locktime 0.
pub fn build_coinbase(
    template: &Template,
    payout_script: &Script,
    pool_tag: &str,
    user_sig: Option<&str>,
    extranonce1_len: usize,
    extranonce2_len: usize,
) -> Result<CoinbaseParts, WorkError> {
    let extranonce_len = extranonce1_len + extranonce2_len;
    // A direct push (opcode = length) keeps the extranonce at a fixed offset.
    if extranonce_len == 0 || extranonce_len > 75 {
        return Err(WorkError::ExtranonceLength(extranonce_len));
    }
    let height_script = Builder::new()
        .push_int(i64::from(template.height))
        .into_script();

    let mut tag = String::from(pool_tag);
    if let Some(sig) = user_sig {
        tag.push('/');
        tag.push_str(sig);
    }
    // Room left for the tag push after the height and the extranonce push.
    let fixed_len = height_script.len() + 1 + extranonce_len;
    let room = MAX_COINBASE_SCRIPT_SIG_LEN
        .checked_sub(fixed_len + 1)
        .ok_or(WorkError::ScriptSigTooLong {
            needed: fixed_len + 1,
        })?;
    truncate_at_char_boundary(&mut tag, room.min(75));

    let tag_push =
        PushBytesBuf::try_from(tag.into_bytes()).map_err(|_| WorkError::ScriptSigTooLong {
            needed: MAX_COINBASE_SCRIPT_SIG_LEN + 1,
        })?;
    let extranonce_push = PushBytesBuf::try_from(vec![0u8; extranonce_len])
        .map_err(|_| WorkError::ExtranonceLength(extranonce_len))?;
    let mut script_sig = height_script.into_bytes();
    script_sig.extend_from_slice(
        Builder::new()
            .push_slice(tag_push)
            .push_slice(extranonce_push)
            .as_bytes(),
    );
    if script_sig.len() > MAX_COINBASE_SCRIPT_SIG_LEN {
        return Err(WorkError::ScriptSigTooLong {
            needed: script_sig.len(),
        });
    }

    let mut output = vec![TxOut {
        value: Amount::from_sat(template.coinbase_value),
        script_pubkey: payout_script.to_owned(),
    }];
    if let Some(commitment) = &template.default_witness_commitment {
        output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: commitment.clone(),
        });
    }
    let script_sig_len = script_sig.len();
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(script_sig),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output,
    };
    // No witness is set, so this is the legacy (stratum) serialization. The
    // scriptSig length fits one byte (<= 100), so offsets are fixed.
    let bytes = serialize(&tx);
    let extranonce_start = BEFORE_SCRIPT_SIG_LEN + 1 + script_sig_len - extranonce_len;
    let coinb1 = bytes.get(..extranonce_start).unwrap_or_default().to_vec();
    let coinb2 = bytes
        .get(extranonce_start + extranonce_len..)
        .unwrap_or_default()
        .to_vec();
    CoinbaseParts::new(coinb1, coinb2, extranonce_len)
}

fn truncate_at_char_boundary(text: &mut String, max_len: usize) {
    if text.len() <= max_len {
        return;
    }
    let mut cut = max_len;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
}
