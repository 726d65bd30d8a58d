//! Sets of small resource ids (meter ids, VLANs) as bitmaps.
//!
//! The resource manager asks, for every allocation, for the lowest id that
//! no set of a group holds (a switch's meters, or the transit VLANs of every
//! link of a path). Probing a tree set id by id from the bottom cost time in
//! proportion to the ids in use, and was the resource manager's largest
//! cost under load; a bitmap answers with a few word operations.

use std::ops::RangeInclusive;

const BITS: u32 = u64::BITS;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    words: Vec<u64>,
}

impl IdSet {
    pub fn insert(&mut self, id: u32) {
        let (word, bit) = position(id);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= bit;
    }

    pub fn remove(&mut self, id: u32) {
        let (word, bit) = position(id);
        if let Some(word) = self.words.get_mut(word) {
            *word &= !bit;
        }
    }

    pub fn contains(&self, id: u32) -> bool {
        let (word, bit) = position(id);
        self.word(word) & bit != 0
    }

    fn word(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }
}

fn position(id: u32) -> (usize, u64) {
    ((id / BITS) as usize, 1 << (id % BITS))
}

/// The lowest id of `range` that none of `sets` holds.
pub fn lowest_free<'a>(
    sets: impl Iterator<Item = &'a IdSet> + Clone,
    range: RangeInclusive<u32>,
) -> Option<u32> {
    let (first, last) = (*range.start(), *range.end());
    if first > last {
        return None;
    }
    for index in (first / BITS)..=(last / BITS) {
        let mut taken = sets
            .clone()
            .fold(0, |taken, set| taken | set.word(index as usize));
        let base = index * BITS;
        // Ids of this word outside the range count as taken.
        if base < first {
            taken |= (1u64 << (first - base)) - 1;
        }
        if last - base < BITS - 1 {
            taken |= !0u64 << (last - base + 1);
        }
        if taken != u64::MAX {
            return Some(base + (!taken).trailing_zeros());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> IdSet {
        let mut set = IdSet::default();
        for id in ids {
            set.insert(*id);
        }
        set
    }

    #[test]
    fn membership_follows_inserts_and_removes() {
        let mut ids = set(&[0, 63, 64, 4_094]);
        assert!(ids.contains(0) && ids.contains(63) && ids.contains(64) && ids.contains(4_094));
        assert!(!ids.contains(1) && !ids.contains(65) && !ids.contains(10_000));
        ids.remove(63);
        ids.remove(10_000);
        assert!(!ids.contains(63) && ids.contains(64));
    }

    #[test]
    fn the_lowest_free_id_is_free_in_every_set_and_inside_the_range() {
        let a = set(&[2, 3, 5]);
        let b = set(&[4, 6]);
        assert_eq!(lowest_free([&a].into_iter(), 2..=4_094), Some(4));
        assert_eq!(lowest_free([&a, &b].into_iter(), 2..=4_094), Some(7));
        assert_eq!(lowest_free([].into_iter(), 32..=2_500), Some(32));
        // Across word boundaries, and up to the range's last id.
        let full = set(&(32..=200).collect::<Vec<_>>());
        assert_eq!(lowest_free([&full].into_iter(), 32..=2_500), Some(201));
        assert_eq!(lowest_free([&full].into_iter(), 32..=200), None);
        assert_eq!(lowest_free([&full].into_iter(), 100..=201), Some(201));
        assert_eq!(lowest_free([&a].into_iter(), 5..=5), None);
        // An empty range, as when the search resumes past the last id.
        let past_the_end = 6;
        assert_eq!(lowest_free([&a].into_iter(), past_the_end..=5), None);
    }

    #[test]
    fn agrees_with_probing_one_id_at_a_time() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let sets: Vec<IdSet> = (0..3)
                .map(|_| set(&(0..150).map(|_| (next() % 300) as u32).collect::<Vec<_>>()))
                .collect();
            let first = (next() % 200) as u32;
            let last = first + (next() % 150) as u32;
            let probed = (first..=last).find(|id| sets.iter().all(|s| !s.contains(*id)));
            assert_eq!(lowest_free(sets.iter(), first..=last), probed);
        }
    }
}
