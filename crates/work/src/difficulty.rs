//! Pool difficulty <-> 256-bit targets, as ckpool and every miner compute them.

use bitcoin::{BlockHash, Target};

/// The difficulty-1 target, 0x00000000FFFF0000...0000.
pub const DIFF1_TARGET: Target = Target::MAX;

/// diff1 as a float: 0xFFFF * 2^208.
const DIFF1_F64: f64 = 65535.0 * TWO_POW_208;
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
const TWO_POW_208: f64 = TWO_POW_64 * TWO_POW_64 * TWO_POW_64 * 65536.0;
const TWO_POW_256: f64 = TWO_POW_64 * TWO_POW_64 * TWO_POW_64 * TWO_POW_64;

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum DifficultyError {
    #[error("difficulty {0} is not a finite number greater than zero")]
    NotPositiveFinite(f64),
}

/// Target a share must meet at pool difficulty `diff` (diff1 / diff).
/// Fractional difficulties work; anything easier than the largest 256-bit
/// value is clamped to it.
pub fn difficulty_to_target(diff: f64) -> Result<Target, DifficultyError> {
    if !diff.is_finite() || diff <= 0.0 {
        return Err(DifficultyError::NotPositiveFinite(diff));
    }
    let mut remaining = DIFF1_F64 / diff;
    if !remaining.is_finite() || remaining >= TWO_POW_256 {
        return Ok(Target::from_le_bytes([0xff; 32]));
    }
    // Split into four 64-bit limbs, most significant first. Every step is
    // exact in f64 because it only rescales by powers of two.
    let mut limbs = [0u64; 4];
    for (index, limb) in limbs.iter_mut().enumerate().rev() {
        let scale = (0..index).fold(1.0, |acc, _| acc * TWO_POW_64);
        let value = (remaining / scale).floor();
        *limb = value as u64;
        remaining -= value * scale;
    }
    let mut bytes = [0u8; 32];
    for (chunk, limb) in bytes.chunks_exact_mut(8).zip(limbs) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    Ok(Target::from_le_bytes(bytes))
}

/// Difficulty of a target (diff1 / target).
pub fn target_to_difficulty(target: &Target) -> f64 {
    let value = le_bytes_to_f64(&target.to_le_bytes());
    if value == 0.0 {
        f64::MAX
    } else {
        DIFF1_F64 / value
    }
}

/// Difficulty a hash achieves: diff1 / hash. A zero hash gives `f64::MAX`.
pub fn share_difficulty(hash: &BlockHash) -> f64 {
    let value = le_bytes_to_f64(hash.as_ref());
    if value == 0.0 {
        f64::MAX
    } else {
        DIFF1_F64 / value
    }
}

/// True when `hash`, read as a little-endian 256-bit number, is <= `target`.
pub fn hash_meets_target(hash: &BlockHash, target: &Target) -> bool {
    target.is_met_by(*hash)
}

fn le_bytes_to_f64(bytes: &[u8; 32]) -> f64 {
    bytes.chunks_exact(8).rev().fold(0.0, |acc, chunk| {
        let mut limb = [0u8; 8];
        limb.copy_from_slice(chunk);
        acc * TWO_POW_64 + u64::from_le_bytes(limb) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    #[test]
    fn difficulty_one_is_diff1() {
        assert_eq!(difficulty_to_target(1.0).unwrap(), DIFF1_TARGET);
        let mut be = [0u8; 32];
        be[4] = 0xff;
        be[5] = 0xff;
        assert_eq!(DIFF1_TARGET.to_be_bytes(), be);
    }

    #[test]
    fn integer_difficulties_divide_diff1() {
        // diff 2 halves the target, diff 65536 drops two bytes.
        let mut be = [0u8; 32];
        be[4] = 0x7f;
        be[5] = 0xff;
        be[6] = 0x80;
        assert_eq!(difficulty_to_target(2.0).unwrap().to_be_bytes(), be);
        let mut be = [0u8; 32];
        be[6] = 0xff;
        be[7] = 0xff;
        assert_eq!(difficulty_to_target(65536.0).unwrap().to_be_bytes(), be);
    }

    #[test]
    fn fractional_difficulty_gives_larger_target() {
        let target = difficulty_to_target(0.0001).unwrap();
        assert!(target > DIFF1_TARGET);
        let back = target_to_difficulty(&target);
        assert!((back - 0.0001).abs() / 0.0001 < 1e-9, "{back}");
        // 0.0001 = diff1 * 10000 ~ 0x0000_2710 * 0xffff << 208: leading bytes.
        let be = target.to_be_bytes();
        assert_eq!(&be[..4], &[0, 0, 0x27, 0x0f]);
    }

    #[test]
    fn tiny_difficulty_clamps_to_max() {
        let max = Target::from_le_bytes([0xff; 32]);
        assert_eq!(difficulty_to_target(1e-12).unwrap(), max);
        assert_eq!(difficulty_to_target(f64::MIN_POSITIVE).unwrap(), max);
    }

    #[test]
    fn bad_difficulties_are_errors() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1.0] {
            assert!(difficulty_to_target(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn share_difficulty_and_target_agree() {
        for diff in [0.001, 1.0, 3.0, 1234.5, 1e12] {
            let target = difficulty_to_target(diff).unwrap();
            let hash = BlockHash::from_byte_array(target.to_le_bytes());
            assert!(hash_meets_target(&hash, &target));
            let got = share_difficulty(&hash);
            assert!((got - diff).abs() / diff < 1e-9, "{diff} -> {got}");
            // One more than the target is above it.
            let mut above = target.to_le_bytes();
            for byte in above.iter_mut() {
                let (value, carry) = byte.overflowing_add(1);
                *byte = value;
                if !carry {
                    break;
                }
            }
            assert!(!hash_meets_target(
                &BlockHash::from_byte_array(above),
                &target
            ));
        }
        assert_eq!(share_difficulty(&BlockHash::all_zeros()), f64::MAX);
    }
}
