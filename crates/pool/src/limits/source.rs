//! Sources as the limits see them, and the allow-list's CIDRs.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// A source as the limits see it: an IPv4 address, or the /64 of an IPv6
/// one (one host usually holds a whole /64, so its addresses are one
/// source). IPv4-mapped IPv6 addresses are their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey {
    bits: u128,
    /// 128 for IPv4 (shown as the address), else the IPv6 prefix length.
    prefix: u8,
}

/// The prefix of an IPv6 site: what an ISP hands one customer (RFC 6177:
/// a /48, or a /56), so the 65,536 /64s a single attacker may hold there
/// still count as one site ([`IpKey::site`]).
pub const IPV6_SITE_PREFIX: u8 = 48;

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey {
                bits: u128::from(v4.to_ipv6_mapped()),
                prefix: 128,
            },
            IpAddr::V6(v6) => IpKey {
                bits: u128::from(v6) & mask(64),
                prefix: 64,
            },
        }
    }

    /// The /48 an IPv6 source belongs to; `None` for IPv4, whose address
    /// is the whole source already.
    pub fn site(ip: IpAddr) -> Option<IpKey> {
        match ip.to_canonical() {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => Some(IpKey {
                bits: u128::from(v6) & mask(IPV6_SITE_PREFIX),
                prefix: IPV6_SITE_PREFIX,
            }),
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.bits);
        match (self.prefix, v6.to_ipv4_mapped()) {
            (128, Some(v4)) => write!(f, "{v4}"),
            (prefix, _) => write!(f, "{v6}/{prefix}"),
        }
    }
}

/// An allow-list entry: `10.0.0.0/8`, `2001:db8::/48`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network in the IPv6 space (IPv4 as mapped addresses).
    network: u128,
    /// Prefix length in that space (IPv4 /n is 96 + n).
    prefix: u8,
    v4: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or address/prefix")]
    Syntax(String),
    #[error("{text:?}: prefix longer than /{max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?} has host bits set (did you mean {network}?)")]
    HostBits { text: String, network: String },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let ip = IpAddr::from_str(address).map_err(|_| syntax())?;
        let (bits, max, v4) = match ip {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 32u8, true),
            IpAddr::V6(v6) => (u128::from(v6), 128u8, false),
        };
        let length = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| syntax())?,
        };
        if length > max {
            return Err(CidrError::Prefix {
                text: text.to_owned(),
                max,
            });
        }
        let prefix = length + (128 - max);
        let cidr = Cidr {
            network: bits & mask(prefix),
            prefix,
            v4,
        };
        if cidr.network != bits {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                network: cidr.to_string(),
            });
        }
        Ok(cidr)
    }
}

fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        (bits ^ self.network) & mask(self.prefix) == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.network);
        match (self.v4, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{v6}/{}", self.prefix),
        }
    }
}
