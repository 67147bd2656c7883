//! Payout addresses: a miner's username is the address its blocks pay.

use bitcoin::address::{Address, AddressType, NetworkUnchecked};
use bitcoin::{Network, ScriptBuf};

/// Longest address accepted (bech32 caps a whole string at 90 characters).
pub const MAX_ADDRESS_LEN: usize = 90;

/// Why a payout address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("payout address is empty")]
    Empty,
    #[error("payout address is {len} characters long, the limit is {MAX_ADDRESS_LEN}")]
    TooLong { len: usize },
    #[error("payout address {address:?} is not a valid bitcoin address: {reason}")]
    Invalid { address: String, reason: String },
    #[error("payout address {address:?} is not an address for {network}")]
    WrongNetwork { address: String, network: Network },
    #[error("payout address {address:?} is of an unsupported type (p2pkh, p2sh, p2wpkh, p2wsh or p2tr expected)")]
    UnsupportedType { address: String },
}

/// Parses `addr` as a P2PKH, P2SH, P2WPKH, P2WSH or P2TR address of `network`
/// and returns the output script that pays it.
///
/// Regtest accepts `bcrt1`, `m`/`n` and `2` addresses; testnet, testnet4 and
/// signet share `tb1`, `m`/`n` and `2`; mainnet takes `bc1`, `1` and `3`.
pub fn parse_payout_address(addr: &str, network: Network) -> Result<ScriptBuf, AddressError> {
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    if addr.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong { len: addr.len() });
    }
    let unchecked: Address<NetworkUnchecked> =
        addr.parse()
            .map_err(|e: bitcoin::address::ParseError| AddressError::Invalid {
                address: addr.to_owned(),
                reason: e.to_string(),
            })?;
    let checked = unchecked
        .require_network(network)
        .map_err(|_| AddressError::WrongNetwork {
            address: addr.to_owned(),
            network,
        })?;
    match checked.address_type() {
        Some(
            AddressType::P2pkh
            | AddressType::P2sh
            | AddressType::P2wpkh
            | AddressType::P2wsh
            | AddressType::P2tr,
        ) => Ok(checked.script_pubkey()),
        _ => Err(AddressError::UnsupportedType {
            address: addr.to_owned(),
        }),
    }
}
