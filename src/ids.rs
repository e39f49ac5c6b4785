//! Fast, non-cryptographic random ids for request ids and UUIDs.
//!
//! Request ids only need to be unique, not secret, so a thread-local wyrand generator (one
//! multiply per 64 bits) is used instead of the OS RNG: it costs a few nanoseconds and never
//! blocks. Each thread seeds itself from the std `RandomState` keys (OS randomness, once).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    // Odd-ness does not matter for wyrand; any 64-bit seed is fine.
    hasher.finish()
}

/// The next 64 random bits of this thread's generator.
pub(crate) fn random_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// 128 random bits.
pub(crate) fn random_u128() -> u128 {
    (u128::from(random_u64()) << 64) | u128::from(random_u64())
}

/// The decimal digits of `value`, without going through `fmt` (per-request paths).
pub(crate) fn decimal(value: u64) -> Decimal {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    Decimal { digits, start: at }
}

/// The result of [`decimal`]: up to 20 ASCII digits on the stack.
pub(crate) struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits are written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for value in [0, 7, 10, 443, 8000, u64::MAX] {
            assert_eq!(decimal(value).as_str(), value.to_string());
        }
    }

    #[test]
    fn ids_differ() {
        let a = random_u128();
        let b = random_u128();
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }
}
