//! Hexadecimal in the two forms the propagated headers use: lowercase digits only (W3C Trace
//! Context, which forbids uppercase) and percent-escapes of either case (W3C Baggage, and the
//! `OTEL_*_HEADERS` variables that share its format). Every hex decoder of the crate lives here.

/// Value of a lowercase hex digit, or `0xff` for anything else (uppercase included: Trace
/// Context forbids it and we must not accept it).
const LOWERCASE: [u8; 256] = {
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
        let hi = LOWERCASE[pair[0] as usize];
        let lo = LOWERCASE[pair[1] as usize];
        // Accumulate instead of branching per digit: one check at the end.
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// Decodes 16 lowercase hex digits (a span id) as a big-endian `u64`.
#[inline]
pub(crate) fn decode_u64(digits: &[u8]) -> Option<u64> {
    decode::<8>(digits).map(u64::from_be_bytes)
}

/// Decodes 32 lowercase hex digits (a trace id) as a big-endian `u128`.
#[inline]
pub(crate) fn decode_u128(digits: &[u8]) -> Option<u128> {
    decode::<16>(digits).map(u128::from_be_bytes)
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

/// The 16 lowercase hex digits of `value`, most significant first.
#[inline]
pub(crate) fn encode_u64(value: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    encode(&value.to_be_bytes(), &mut out);
    out
}

/// The byte that the two hex digits (either case) at the start of `bytes` spell: the tail of a
/// percent-escape.
pub(crate) fn escaped_byte(bytes: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match bytes {
        [high, low, ..] => Some((digit(*high)? * 16 + digit(*low)?) as u8),
        _ => None,
    }
}

/// Percent-decodes `bytes`. A `%` not followed by two hex digits is kept as written, or, when
/// `strict`, makes the whole decoding `None`.
pub(crate) fn percent_decode(bytes: &[u8], strict: bool) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], escaped_byte(&bytes[i + 1..])) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (b'%', None) if strict => return None,
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    Some(decoded)
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
        assert_eq!(encode_u64(0x00f0_67aa_0ba9_02b7), *b"00f067aa0ba902b7");
        assert_eq!(decode_u64(b"00f067aa0ba902b7"), Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(
            decode_u128(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
        assert_eq!(decode_u64(b"00f067aa0ba902b"), None);
        assert_eq!(decode_u128(b"4bf92f3577b34da6a3ce929d0e0e473G"), None);
    }

    /// Every byte in every position: exactly the lowercase digits decode, to their value.
    #[test]
    fn only_lowercase_digits_decode() {
        for position in 0..2 {
            for byte in 0..=255u8 {
                let mut digits = *b"0a";
                digits[position] = byte;
                let expected = (byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
                    .then(|| u8::from_str_radix(std::str::from_utf8(&digits).unwrap(), 16).unwrap());
                assert_eq!(decode::<1>(&digits).map(|[b]| b), expected, "byte {byte:#x} at {position}");
            }
        }
        assert_eq!(decode::<1>(b"AB"), None);
        assert_eq!(decode::<1>(b"0"), None);
    }

    #[test]
    fn percent_escapes_take_either_case() {
        assert_eq!(escaped_byte(b"2fx"), Some(b'/'));
        assert_eq!(escaped_byte(b"2F"), Some(b'/'));
        assert_eq!(escaped_byte(b"2"), None);
        assert_eq!(percent_decode(b"a%20b%FF", true), Some(b"a b\xff".to_vec()));
        assert_eq!(percent_decode(b"100%", false), Some(b"100%".to_vec()));
        assert_eq!(percent_decode(b"100%", true), None);
        assert_eq!(percent_decode(b"%zz", true), None);
    }
}
