//! The pool's authority key: the secp256k1 key whose signature on each
//! connection's Noise static key proves to a miner that it talks to this
//! pool. Written as SRI does: the public key is base58check of a 2-byte
//! version (1, 0) and the 32-byte x-only key, the secret base58check of the
//! 32 bytes.

use bitcoin::base58;
use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};

/// Prefix of an encoded authority public key (SRI's version 1.0).
const PUBLIC_KEY_VERSION: [u8; 2] = [1, 0];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base58check: {0}")]
    Encoding(String),
    #[error("a {what} is {expected} bytes once decoded, this one is {found}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("an authority public key starts with version 1.0, this one with {0}.{1}")]
    Version(u8, u8),
    #[error("not a valid secp256k1 {0}")]
    Invalid(&'static str),
    #[error("the public key {given} is not the secret key's ({derived})")]
    Mismatch { given: String, derived: String },
}

/// The pool's authority key pair.
#[derive(Clone)]
pub struct AuthorityKey {
    secret: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for AuthorityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("AuthorityKey")
            .field("public", &self.public_base58())
            .finish_non_exhaustive()
    }
}

impl AuthorityKey {
    /// A new random key pair.
    pub fn generate() -> AuthorityKey {
        let secp = Secp256k1::new();
        let keypair = Keypair::new(&secp, &mut bitcoin::secp256k1::rand::thread_rng());
        AuthorityKey::from_keypair(&keypair)
    }

    fn from_keypair(keypair: &Keypair) -> AuthorityKey {
        AuthorityKey {
            secret: keypair.secret_bytes(),
            public: keypair.x_only_public_key().0.serialize(),
        }
    }

    /// From the base58check secret; `public`, when given, must be its key.
    pub fn from_base58(secret: &str, public: Option<&str>) -> Result<AuthorityKey, KeyError> {
        let bytes = decode(secret.trim(), "secret key", 32)?;
        let secret_key =
            SecretKey::from_slice(&bytes).map_err(|_| KeyError::Invalid("secret key"))?;
        let key = AuthorityKey::from_keypair(&Keypair::from_secret_key(
            &Secp256k1::signing_only(),
            &secret_key,
        ));
        if let Some(given) = public {
            if parse_public_key(given)? != key.public {
                return Err(KeyError::Mismatch {
                    given: given.trim().to_string(),
                    derived: key.public_base58(),
                });
            }
        }
        Ok(key)
    }

    /// The 32-byte x-only public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.public
    }

    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// The public key as miners and proxies are configured with it.
    pub fn public_base58(&self) -> String {
        encode_public_key(&self.public)
    }

    /// The secret key, for the pool's config.
    pub fn secret_base58(&self) -> String {
        base58::encode_check(&self.secret)
    }
}

/// A base58check authority public key to its 32 x-only bytes.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = decode(text.trim(), "public key", 34)?;
    if bytes[..2] != PUBLIC_KEY_VERSION {
        return Err(KeyError::Version(bytes[0], bytes[1]));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[2..]);
    bitcoin::secp256k1::XOnlyPublicKey::from_slice(&key)
        .map_err(|_| KeyError::Invalid("public key"))?;
    Ok(key)
}

/// 32 x-only bytes as a base58check authority public key.
pub fn encode_public_key(key: &[u8; 32]) -> String {
    let mut bytes = PUBLIC_KEY_VERSION.to_vec();
    bytes.extend_from_slice(key);
    base58::encode_check(&bytes)
}

fn decode(text: &str, what: &'static str, expected: usize) -> Result<Vec<u8>, KeyError> {
    let bytes = base58::decode_check(text).map_err(|e| KeyError::Encoding(e.to_string()))?;
    if bytes.len() != expected {
        return Err(KeyError::Length {
            what,
            expected,
            found: bytes.len(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text() {
        let key = AuthorityKey::generate();
        let again = AuthorityKey::from_base58(&key.secret_base58(), Some(&key.public_base58()))
            .expect("its own text");
        assert_eq!(again.public_bytes(), key.public_bytes());
        assert_eq!(
            parse_public_key(&key.public_base58()),
            Ok(key.public_bytes())
        );
        assert!(!format!("{key:?}").contains(&key.secret_base58()));
    }

    #[test]
    fn sri_example_public_key_parses() {
        // The translator's and the SRI pool's example configs use this key.
        let key = parse_public_key("9auqWEzQDVyd2oe1JVGFLMLHZtCo2FFqZwtKA5gd9xbuEu7PH72")
            .expect("SRI's example key");
        assert_eq!(
            encode_public_key(&key),
            "9auqWEzQDVyd2oe1JVGFLMLHZtCo2FFqZwtKA5gd9xbuEu7PH72"
        );
    }

    #[test]
    fn wrong_keys_say_why() {
        let key = AuthorityKey::generate();
        let other = AuthorityKey::generate();
        assert!(matches!(
            AuthorityKey::from_base58(&key.secret_base58(), Some(&other.public_base58())),
            Err(KeyError::Mismatch { .. })
        ));
        assert!(matches!(
            parse_public_key("not a key"),
            Err(KeyError::Encoding(_))
        ));
        assert!(matches!(
            parse_public_key(&key.secret_base58()),
            Err(KeyError::Length { found: 32, .. })
        ));
    }
}
