//! Lowercase hexadecimal, the only form W3C Trace Context allows.

/// Value of a lowercase hex digit, or `0xff` for anything else (uppercase included: the spec
/// forbids it and we must not accept it).
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

const ENCODE: &[u8; 16] = b"0123456789abcdef";

/// Decodes `2 * N` lowercase hex digits into `N` bytes; `None` on any other character.
#[inline]
pub(crate) fn decode<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = DECODE[pair[0] as usize];
        let lo = DECODE[pair[1] as usize];
        // Accumulate instead of branching per digit: one check at the end.
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// Decodes 8 lowercase hex digits at once (SWAR: eight bytes in one `u64`). Returns the value
/// and a mask that is `HIGH` exactly when all eight were lowercase hex digits. The
/// traceparent's 48 id digits are the hot part of extraction, and this is several times faster
/// than a table lookup per digit.
#[inline(always)]
fn decode8(x: u64) -> (u32, u64) {
    // With every byte below 0x80, adding up to 0x7f per byte never carries into the next one:
    // the high bit of (x + (0x80 - lo)) says "byte >= lo". Bytes of 0x80 and above are refused
    // through `!x` below.
    let at_least = |lo: u64| x.wrapping_add((0x80 - lo) * ONES) & HIGH;
    let digit = at_least(0x30) & !at_least(0x3a);
    let letter = at_least(0x61) & !at_least(0x67);
    let valid = (digit | letter) & !x;
    // '0'..'9' → low nibble; 'a'..'f' → low nibble + 9 (bit 6 marks letters).
    let values = (x & (0x0f * ONES)) + ((x >> 6) & ONES) * 9;
    // Little-endian: byte 0 is the first digit, the high nibble of the first output byte.
    let pairs = ((values & 0x000f_000f_000f_000f) << 4) | ((values >> 8) & 0x000f_000f_000f_000f);
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let packed = (quads | (quads >> 16)) & 0xffff_ffff;
    (u32::from_be_bytes((packed as u32).to_le_bytes()), valid)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight bytes of `digits` from `at`, little-endian (callers pass in-bounds offsets).
#[inline(always)]
fn load(digits: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(bytes) = digits.get(at..at + 8) {
        word.copy_from_slice(bytes);
    }
    u64::from_le_bytes(word)
}

/// Decodes 16 lowercase hex digits (a span id) as a big-endian `u64`.
#[inline]
pub(crate) fn decode_u64(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    let (high, high_ok) = decode8(load(digits, 0));
    let (low, low_ok) = decode8(load(digits, 8));
    // One check for both words: no branch per eight digits.
    (high_ok & low_ok == HIGH).then_some((u64::from(high) << 32) | u64::from(low))
}

/// Decodes 32 lowercase hex digits (a trace id) as a big-endian `u128`.
#[inline]
pub(crate) fn decode_u128(digits: &[u8]) -> Option<u128> {
    if digits.len() != 32 {
        return None;
    }
    let (a, a_ok) = decode8(load(digits, 0));
    let (b, b_ok) = decode8(load(digits, 8));
    let (c, c_ok) = decode8(load(digits, 16));
    let (d, d_ok) = decode8(load(digits, 24));
    let high = (u64::from(a) << 32) | u64::from(b);
    let low = (u64::from(c) << 32) | u64::from(d);
    (a_ok & b_ok & c_ok & d_ok == HIGH).then_some((u128::from(high) << 64) | u128::from(low))
}

/// The 8 lowercase hex digits of `value` (SWAR: each nibble spread into its own byte, then
/// turned into a digit with one add and one masked add).
#[inline(always)]
fn encode8(value: u32) -> [u8; 8] {
    let x = u64::from(value);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let nibbles = (x | (x << 4)) & (0x0f * ONES);
    // Nibbles of 10 and more get the extra distance from '9' + 1 to 'a'.
    let letters = ((nibbles + 0x06 * ONES) >> 4) & ONES;
    (nibbles + 0x30 * ONES + letters * 0x27).to_be_bytes()
}

/// The 16 lowercase hex digits of `value`, most significant first.
#[inline]
pub(crate) fn encode_u64(value: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&encode8((value >> 32) as u32));
    out[8..].copy_from_slice(&encode8(value as u32));
    out
}

/// Writes `bytes` as lowercase hex into `out`, which must be twice as long.
#[inline]
pub(crate) fn encode(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = ENCODE[(byte >> 4) as usize];
        pair[1] = ENCODE[(byte & 0x0f) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        let mut text = [0u8; 8];
        encode(&bytes, &mut text);
        assert_eq!(&text, b"007fabff");
        assert_eq!(decode::<4>(&text), Some(bytes));
    }

    #[test]
    fn swar_matches_the_table_on_every_byte() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                let mut digits = *b"0a1b2c3d";
                digits[position] = byte;
                let table = decode::<4>(&digits).map(u32::from_be_bytes);
                let (value, valid) = decode8(u64::from_le_bytes(digits));
                assert_eq!((valid == HIGH).then_some(value), table, "byte {byte:#x} at {position}");
            }
        }
        assert_eq!(decode_u64(b"00f067aa0ba902b7"), Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(
            decode_u128(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
        assert_eq!(decode_u64(b"00f067aa0ba902b"), None);
        assert_eq!(decode_u128(b"4bf92f3577b34da6a3ce929d0e0e473G"), None);
    }

    #[test]
    fn swar_encoding_matches_the_table() {
        for value in [0u64, 1, 0x0123_4567_89ab_cdef, u64::MAX, 0xa0b0_c0d0_e0f0_0909, 0x00f0_67aa_0ba9_02b7]
        {
            let mut table = [0u8; 16];
            encode(&value.to_be_bytes(), &mut table);
            assert_eq!(encode_u64(value), table, "{value:#x}");
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let mut table = [0u8; 16];
            encode(&state.to_be_bytes(), &mut table);
            assert_eq!(encode_u64(state), table);
        }
    }

    #[test]
    fn rejects_uppercase_and_junk() {
        assert_eq!(decode::<1>(b"AB"), None);
        assert_eq!(decode::<1>(b"g0"), None);
        assert_eq!(decode::<1>(b"0"), None);
        assert_eq!(decode::<1>(b"0 "), None);
    }
}
