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

/// How keys are spread over workers: through a fixed number of *key groups*. A key's group is
/// its hash modulo the count, and group `g` belongs to worker `g % W` of `W` workers (all
/// processes together). The count is fixed for a job's life (its checkpoint records it), so a
/// checkpoint's state can be split by group among any other number of workers; many divisors
/// (the default 720 divides evenly among 1–6, 8, 9, 10, 12, 15, 16 ... workers) keep the shares
/// equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyGroups(pub u64);

impl Default for KeyGroups {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

impl KeyGroups {
    /// The count when a job does not choose one.
    pub const DEFAULT: u64 = 720;

    /// The key group of a key hash ([`key_hash`]); routing it puts it on its group's worker
    /// (timely's exchange takes the route modulo the workers).
    pub fn route(self, hash: u64) -> u64 {
        hash % self.0
    }

    /// The worker of `peers` that owns `key`.
    pub fn owner(self, key: &str, peers: usize) -> usize {
        (self.route(key_hash(key)) % peers as u64) as usize
    }

    /// How many groups `worker` of `peers` owns.
    pub fn owned(self, worker: usize, peers: usize) -> u64 {
        let (w, p) = (worker as u64, peers as u64);
        if w >= self.0 {
            return 0;
        }
        (self.0 - 1 - w) / p + 1
    }
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

    #[test]
    fn key_groups_share_keys_by_group() {
        let g = KeyGroups(720);
        assert_eq!(g.owned(0, 1), 720);
        assert_eq!((0..7).map(|w| g.owned(w, 7)).sum::<u64>(), 720);
        assert_eq!(g.owned(6, 7), 102);
        assert_eq!(KeyGroups(3).owned(4, 5), 0);
        // Owners agree with the route timely takes modulo the workers, for any worker count.
        for k in ["K1", "K2", "0xabc", ""] {
            for p in 1..9 {
                assert_eq!(g.owner(k, p) as u64, g.route(key_hash(k)) % p as u64);
            }
        }
    }
}
