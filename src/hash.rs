//! Stable hashes: the same in every process, on every machine and in every run, because they
//! route keys to workers (every process of a cluster must agree) and check checkpoint parts
//! written by an earlier run. 64-bit FNV-1a: tiny, fast on short keys, fixed by definition.

/// 64-bit FNV-1a of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hash that routes a key to the worker owning it.
pub(crate) fn key_hash(key: &str) -> u64 {
    let h = fnv1a(key.as_bytes());
    // FNV's low bits mix poorly; routing takes the hash modulo the worker count.
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_fixed_by_definition() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_hash("K1"), key_hash("K1"));
        assert_ne!(key_hash("K1"), key_hash("K2"));
    }
}
