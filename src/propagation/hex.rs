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
    fn rejects_uppercase_and_junk() {
        assert_eq!(decode::<1>(b"AB"), None);
        assert_eq!(decode::<1>(b"g0"), None);
        assert_eq!(decode::<1>(b"0"), None);
        assert_eq!(decode::<1>(b"0 "), None);
    }
}
