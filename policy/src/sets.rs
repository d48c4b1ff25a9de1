//! Compact sets of regions or models, indexed by their position in the catalog.

/// A set of small indices (positions in a catalog's region or model list), as a bitset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexSet {
    words: Vec<u64>,
}

impl IndexSet {
    /// An empty set able to hold indices below `capacity` without growing.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            words: vec![0; capacity.div_ceil(64)],
        }
    }

    /// The set `{0, 1, …, len − 1}`.
    pub fn full(len: usize) -> Self {
        let mut set = Self::with_capacity(len);
        for i in 0..len {
            set.insert(i);
        }
        set
    }

    /// Adds `index`.
    pub fn insert(&mut self, index: usize) {
        let word = index / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (index % 64);
    }

    /// Whether `index` is in the set.
    #[inline]
    pub fn contains(&self, index: usize) -> bool {
        self.words
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the two sets share a member.
    pub fn intersects(&self, other: &IndexSet) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_iterate() {
        let mut s = IndexSet::with_capacity(10);
        assert!(s.is_empty());
        for i in [0, 63, 64, 130] {
            s.insert(i);
        }
        assert!(s.contains(63) && s.contains(130) && !s.contains(1) && !s.contains(999));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63, 64, 130]);
        assert_eq!(s.len(), 4);
        let mut t = IndexSet::default();
        t.insert(64);
        assert!(s.intersects(&t));
        assert_eq!(IndexSet::full(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
