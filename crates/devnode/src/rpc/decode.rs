//! Decoding RPCs and the transaction and script shapes they answer in
//! (Core's `decoderawtransaction`, `validateaddress`, and the transactions
//! of `getblock` verbosity 2). Pure: no node state.

use bitcoin::{Address, Network, Script, Transaction};
use serde_json::{json, Map, Value};

use super::{btc, string_param, RpcError, RPC_DESERIALIZATION_ERROR};

/// `validateaddress ADDRESS`: Core's shape, for regtest addresses. An
/// invalid address is an answer (`isvalid: false` with the reason), not an
/// RPC error.
pub(super) fn validate_address(params: &[Value]) -> Result<Value, RpcError> {
    let text = string_param(params, 0, "address")?;
    let parsed = text
        .parse::<Address<_>>()
        .map_err(|error| error.to_string())
        .and_then(|address| {
            address
                .require_network(Network::Regtest)
                .map_err(|error| error.to_string())
        });
    let address = match parsed {
        Ok(address) => address,
        Err(error) => {
            return Ok(json!({"isvalid": false, "error_locations": [], "error": error}));
        }
    };
    let script = address.script_pubkey();
    let mut fields = Map::new();
    fields.insert("isvalid".into(), json!(true));
    fields.insert("address".into(), json!(address.to_string()));
    fields.insert("scriptPubKey".into(), json!(hex::encode(script.as_bytes())));
    fields.insert(
        "isscript".into(),
        json!(script.is_p2sh() || script.is_p2wsh() || script.is_p2tr()),
    );
    let witness = script.witness_version();
    fields.insert("iswitness".into(), json!(witness.is_some()));
    if let Some(version) = witness {
        fields.insert("witness_version".into(), json!(version.to_num()));
        // The program: the script's bytes after the version and push opcodes.
        fields.insert(
            "witness_program".into(),
            json!(hex::encode(&script.as_bytes()[2..])),
        );
    }
    Ok(Value::Object(fields))
}

/// `decoderawtransaction HEX`.
pub(super) fn decode_raw_transaction(params: &[Value]) -> Result<Value, RpcError> {
    let text = string_param(params, 0, "hexstring")?;
    let tx: Transaction = hex::decode(text)
        .ok()
        .and_then(|bytes| bitcoin::consensus::deserialize(&bytes).ok())
        .ok_or_else(|| RpcError::new(RPC_DESERIALIZATION_ERROR, "TX decode failed"))?;
    Ok(decode_transaction(&tx))
}

fn script_type(script: &Script) -> &'static str {
    if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2tr() {
        "witness_v1_taproot"
    } else if script.is_op_return() {
        "nulldata"
    } else if script.is_p2pk() {
        "pubkey"
    } else if script.is_multisig() {
        "multisig"
    } else if script.is_witness_program() {
        "witness_unknown"
    } else {
        "nonstandard"
    }
}

pub(super) fn decode_transaction(tx: &Transaction) -> Value {
    let inputs: Vec<Value> = tx
        .input
        .iter()
        .map(|input| {
            let mut fields = Map::new();
            if tx.is_coinbase() {
                fields.insert(
                    "coinbase".into(),
                    json!(hex::encode(input.script_sig.as_bytes())),
                );
            } else {
                fields.insert("txid".into(), json!(input.previous_output.txid.to_string()));
                fields.insert("vout".into(), json!(input.previous_output.vout));
                fields.insert(
                    "scriptSig".into(),
                    json!({
                        "asm": input.script_sig.to_asm_string(),
                        "hex": hex::encode(input.script_sig.as_bytes()),
                    }),
                );
            }
            if !input.witness.is_empty() {
                fields.insert(
                    "txinwitness".into(),
                    json!(input.witness.iter().map(hex::encode).collect::<Vec<_>>()),
                );
            }
            fields.insert("sequence".into(), json!(input.sequence.to_consensus_u32()));
            Value::Object(fields)
        })
        .collect();
    let outputs: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(index, output)| {
            let mut script = Map::new();
            script.insert("asm".into(), json!(output.script_pubkey.to_asm_string()));
            script.insert(
                "hex".into(),
                json!(hex::encode(output.script_pubkey.as_bytes())),
            );
            if let Ok(address) = Address::from_script(&output.script_pubkey, Network::Regtest) {
                script.insert("address".into(), json!(address.to_string()));
            }
            script.insert("type".into(), json!(script_type(&output.script_pubkey)));
            json!({"value": btc(output.value), "n": index, "scriptPubKey": script})
        })
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": inputs,
        "vout": outputs,
        "hex": bitcoin::consensus::encode::serialize_hex(tx),
    })
}
