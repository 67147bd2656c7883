//! Bitcoin Core's `getblocktemplate` answer, parsed and checked field by field.

use std::str::FromStr;

use bitcoin::consensus::deserialize;
use bitcoin::{BlockHash, CompactTarget, ScriptBuf, Target, Transaction, Txid, Wtxid};
use serde_json::{Map, Value};

/// Largest coinbase value accepted (21 million BTC in satoshis).
const MAX_MONEY_SAT: u64 = 21_000_000 * 100_000_000;

/// Why a getblocktemplate answer was refused; always names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("getblocktemplate answer is not a JSON object")]
    NotAnObject,
    #[error("getblocktemplate answer has no field {0:?}")]
    Missing(String),
    #[error("getblocktemplate field {field:?} is invalid: {reason}")]
    Invalid { field: String, reason: String },
}

/// One non-coinbase transaction of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateTx {
    /// Consensus serialization (with witness when it has one), as the block carries it.
    pub data: Vec<u8>,
    pub txid: Txid,
    pub wtxid: Wtxid,
    /// Fee in satoshis (0 when the node did not say).
    pub fee: u64,
}

/// A checked getblocktemplate answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub height: u32,
    pub version: i32,
    pub previous_block_hash: BlockHash,
    pub bits: CompactTarget,
    pub cur_time: u32,
    /// Earliest ntime the node accepts (`mintime`; `curtime` when absent).
    pub min_time: u32,
    /// Satoshis the coinbase may pay: subsidy plus fees.
    pub coinbase_value: u64,
    pub transactions: Vec<TemplateTx>,
    /// The OP_RETURN witness commitment output script, when the node sent one.
    pub default_witness_commitment: Option<ScriptBuf>,
    /// Network target (equal to `bits` expanded; checked when the node sends `target`).
    pub target: Target,
}

impl Template {
    /// Parses the `result` of getblocktemplate. Each transaction's txid and
    /// wtxid are recomputed from its data and must match what the node said.
    pub fn from_gbt(json: &Value) -> Result<Template, TemplateError> {
        let obj = json.as_object().ok_or(TemplateError::NotAnObject)?;

        let height = u32_field(obj, "height")?;
        if height == 0 {
            return Err(invalid("height", "must be at least 1"));
        }
        let version_raw = required(obj, "version")?
            .as_i64()
            .ok_or_else(|| invalid("version", "not an integer"))?;
        let version = i32::try_from(version_raw)
            .or_else(|_| u32::try_from(version_raw).map(|v| v as i32))
            .map_err(|_| invalid("version", "out of the 32-bit range"))?;
        let previous_block_hash = BlockHash::from_str(str_field(obj, "previousblockhash")?)
            .map_err(|e| invalid("previousblockhash", e))?;
        let bits = parse_bits(str_field(obj, "bits")?)?;
        let cur_time = u32_field(obj, "curtime")?;
        let min_time = match obj.get("mintime") {
            None | Some(Value::Null) => cur_time,
            Some(_) => u32_field(obj, "mintime")?,
        };
        let coinbase_value = required(obj, "coinbasevalue")?
            .as_u64()
            .ok_or_else(|| invalid("coinbasevalue", "not a non-negative integer"))?;
        if coinbase_value > MAX_MONEY_SAT {
            return Err(invalid("coinbasevalue", "more than 21 million BTC"));
        }

        let target = Target::from_compact(bits);
        if let Some(value) = obj.get("target").filter(|v| !v.is_null()) {
            let text = value
                .as_str()
                .ok_or_else(|| invalid("target", "not a string"))?;
            let bytes = decode_hex_array::<32>(text).map_err(|e| invalid("target", e))?;
            if Target::from_be_bytes(bytes) != target {
                return Err(invalid("target", "does not match bits"));
            }
        }

        let default_witness_commitment = match obj.get("default_witness_commitment") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let field = "default_witness_commitment";
                let text = value
                    .as_str()
                    .ok_or_else(|| invalid(field, "not a string"))?;
                let script = ScriptBuf::from_bytes(
                    hex::decode(text).map_err(|e| invalid(field, format!("bad hex: {e}")))?,
                );
                if !is_witness_commitment(script.as_bytes()) {
                    return Err(invalid(field, "not an OP_RETURN aa21a9ed commitment"));
                }
                Some(script)
            }
        };

        let list = required(obj, "transactions")?
            .as_array()
            .ok_or_else(|| invalid("transactions", "not an array"))?;
        let transactions = list
            .iter()
            .enumerate()
            .map(|(index, tx)| parse_tx(index, tx))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Template {
            height,
            version,
            previous_block_hash,
            bits,
            cur_time,
            min_time,
            coinbase_value,
            transactions,
            default_witness_commitment,
            target,
        })
    }
}

/// BIP141 commitment output: OP_RETURN, push 36, aa21a9ed, 32-byte hash.
pub(crate) fn is_witness_commitment(script: &[u8]) -> bool {
    script.len() >= 38 && script.starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed])
}

fn parse_tx(index: usize, tx: &Value) -> Result<TemplateTx, TemplateError> {
    let name = |key: &str| format!("transactions[{index}].{key}");
    let obj = tx.as_object().ok_or_else(|| TemplateError::Invalid {
        field: format!("transactions[{index}]"),
        reason: "not an object".into(),
    })?;
    let text_of = |key: &str| -> Result<&str, TemplateError> {
        obj.get(key)
            .ok_or_else(|| TemplateError::Missing(name(key)))?
            .as_str()
            .ok_or_else(|| invalid(name(key), "not a string"))
    };
    let data = hex::decode(text_of("data")?)
        .map_err(|e| invalid(name("data"), format!("bad hex: {e}")))?;
    let decoded: Transaction =
        deserialize(&data).map_err(|e| invalid(name("data"), format!("not a transaction: {e}")))?;
    if decoded.is_coinbase() {
        return Err(invalid(name("data"), "is a coinbase transaction"));
    }
    let txid = Txid::from_str(text_of("txid")?).map_err(|e| invalid(name("txid"), e))?;
    if decoded.compute_txid() != txid {
        return Err(invalid(name("txid"), "does not match the transaction data"));
    }
    let wtxid = match obj.get("hash") {
        None | Some(Value::Null) => decoded.compute_wtxid(),
        Some(_) => Wtxid::from_str(text_of("hash")?).map_err(|e| invalid(name("hash"), e))?,
    };
    if decoded.compute_wtxid() != wtxid {
        return Err(invalid(name("hash"), "does not match the transaction data"));
    }
    let fee = match obj.get("fee") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .ok_or_else(|| invalid(name("fee"), "not a non-negative integer"))?,
    };
    Ok(TemplateTx {
        data,
        txid,
        wtxid,
        fee,
    })
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Value, TemplateError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(TemplateError::Missing(key.to_owned())),
        Some(value) => Ok(value),
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, TemplateError> {
    required(obj, key)?
        .as_str()
        .ok_or_else(|| invalid(key, "not a string"))
}

fn u32_field(obj: &Map<String, Value>, key: &str) -> Result<u32, TemplateError> {
    required(obj, key)?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| invalid(key, "not an integer in 0..=4294967295"))
}

fn parse_bits(text: &str) -> Result<CompactTarget, TemplateError> {
    let bytes = decode_hex_array::<4>(text).map_err(|e| invalid("bits", e))?;
    Ok(CompactTarget::from_consensus(u32::from_be_bytes(bytes)))
}

pub(crate) fn decode_hex_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| format!("expected {} hex characters: {e}", N * 2))?;
    Ok(out)
}

fn invalid(field: impl Into<String>, reason: impl ToString) -> TemplateError {
    TemplateError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}
