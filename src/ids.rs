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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ() {
        let a = random_u128();
        let b = random_u128();
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }
}
