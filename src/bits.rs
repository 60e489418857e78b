//! A fixed-size bit set, used for "which chunks of a file does this node hold".

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl BitSet {
    pub fn new(len: u32) -> Self {
        BitSet {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    pub fn full(len: u32) -> Self {
        let mut b = BitSet::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count(&self) -> u32 {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns true if it was clear. Out-of-range indexes are ignored.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        if *w & m != 0 {
            return false;
        }
        *w |= m;
        self.ones += 1;
        true
    }

    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1u64 << (i % 64));
        self.ones -= 1;
        true
    }

    /// Indexes of the set bits, in increasing order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        ones(self.words.iter().copied())
    }

    /// Indexes set in both `self` and `other`, in increasing order, a word at a time.
    pub fn iter_both<'a>(&'a self, other: &'a BitSet) -> impl Iterator<Item = u32> + 'a {
        ones(self.words.iter().zip(&other.words).map(|(a, b)| a & b))
    }

    /// Wire form: bit i is bit (i % 8) of byte i / 8.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; (self.len as usize).div_ceil(8)];
        for i in self.iter_ones() {
            out[(i / 8) as usize] |= 1 << (i % 8);
        }
        out
    }

    /// Parses the wire form; `None` if the length is wrong or a bit past `len` is set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut b = BitSet::new(len);
        for (k, byte) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let i = (k * 8 + bit) as u32;
                    if i >= len {
                        return None;
                    }
                    b.set(i);
                }
            }
        }
        Some(b)
    }
}

/// The set bits of a sequence of words (bits past a set's length are always clear).
fn ones(words: impl Iterator<Item = u64>) -> impl Iterator<Item = u32> {
    words.enumerate().flat_map(|(k, mut w)| {
        std::iter::from_fn(move || {
            (w != 0).then(|| {
                let b = w.trailing_zeros();
                w &= w - 1;
                k as u32 * 64 + b
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count() {
        let mut b = BitSet::new(130);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(129));
        assert!(!b.set(130));
        assert_eq!(b.count(), 2);
        assert!(b.clear(0));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![129]);
        let mut c = BitSet::new(130);
        c.set(129);
        c.set(64);
        b.set(64);
        b.set(3);
        assert_eq!(b.iter_both(&c).collect::<Vec<_>>(), vec![64, 129]);
        assert!(BitSet::full(130).is_full());
    }

    #[test]
    fn wire_round_trip() {
        let mut b = BitSet::new(11);
        for i in [0, 3, 10] {
            b.set(i);
        }
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 2);
        assert_eq!(BitSet::from_bytes(11, &bytes), Some(b));
        assert_eq!(BitSet::from_bytes(11, &[0xff, 0xff]), None, "bits past len");
        assert_eq!(BitSet::from_bytes(11, &[0]), None, "short");
    }
}
