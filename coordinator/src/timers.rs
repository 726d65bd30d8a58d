//! The timer store of one partition: every armed callback, ordered by
//! deadline, findable by key.
//!
//! Memory is what limits how many callbacks a coordinator can hold, so an
//! entry is a deadline, the reply topic as a one-byte enum and one heap
//! block with all its strings; the key is stored once, in that block, and
//! both indexes refer to the entry by a 4-byte slot number.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use wfm_protocol::Topic;

/// An armed callback, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub key: String,
    /// Milliseconds since the Unix epoch.
    pub deadline: i64,
    pub reply_topic: Topic,
    pub reply_key: String,
    pub correlation_id: String,
    /// The register's context as JSON text: far smaller than a `serde_json::Value` tree.
    pub context: String,
    /// Whether `coordinator.state` holds a record for this key, so that
    /// disarming it must write a tombstone.
    pub in_changelog: bool,
}

/// What arming did to the callback's previous registration, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Armed {
    New,
    Replaced { previous_deadline: i64 },
}

/// What a cancel disarmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disarmed {
    InChangelog,
    InMemoryOnly,
}

/// `key`, `reply_key`, `correlation_id` and `context` in one allocation:
/// three little-endian u32 lengths, then the bytes; the context is the rest.
struct Packed(Box<[u8]>);

const HEADER: usize = 12;

impl Packed {
    fn new(callback: &Callback) -> Self {
        let parts = [
            callback.key.as_bytes(),
            callback.reply_key.as_bytes(),
            callback.correlation_id.as_bytes(),
        ];
        let len = HEADER + parts.iter().map(|p| p.len()).sum::<usize>() + callback.context.len();
        let mut bytes = Vec::with_capacity(len);
        for part in parts {
            // A record is at most a few megabytes, so every length fits.
            bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
        }
        for part in parts {
            bytes.extend_from_slice(part);
        }
        bytes.extend_from_slice(callback.context.as_bytes());
        Self(bytes.into_boxed_slice())
    }

    fn len_at(&self, i: usize) -> usize {
        let at = i * 4;
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes")) as usize
    }

    /// The `i`th string (3 = the context).
    fn part(&self, i: usize) -> &str {
        let start = HEADER + (0..i).map(|j| self.len_at(j)).sum::<usize>();
        let end = if i < 3 {
            start + self.len_at(i)
        } else {
            self.0.len()
        };
        // Every part was copied from a `&str` and split at its own boundaries.
        std::str::from_utf8(&self.0[start..end]).expect("packed parts are UTF-8")
    }

    fn key(&self) -> &str {
        self.part(0)
    }
}

struct Entry {
    deadline: i64,
    reply_topic: Topic,
    in_changelog: bool,
    packed: Packed,
}

impl Entry {
    fn unpack(&self) -> Callback {
        let part = |i| self.packed.part(i).to_owned();
        Callback {
            key: part(0),
            deadline: self.deadline,
            reply_topic: self.reply_topic,
            reply_key: part(1),
            correlation_id: part(2),
            context: part(3),
            in_changelog: self.in_changelog,
        }
    }
}

#[derive(Default)]
pub struct TimerStore {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Slot numbers, hashed by the key stored in the slot.
    by_key: HashTable<u32>,
    by_deadline: BTreeSet<(i64, u32)>,
    hasher: RandomState,
}

impl TimerStore {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn next_deadline(&self) -> Option<i64> {
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }

    pub fn deadline_of(&self, key: &str) -> Option<i64> {
        self.find(key).map(|slot| self.entry(slot).deadline)
    }

    /// The armed callback of `key`, unpacked.
    pub fn get(&self, key: &str) -> Option<Callback> {
        self.find(key).map(|slot| self.entry(slot).unpack())
    }

    /// Records that the changelog now holds `key`'s registration.
    pub fn set_in_changelog(&mut self, key: &str) {
        if let Some(slot) = self.find(key) {
            if let Some(entry) = self.slots[slot as usize].as_mut() {
                entry.in_changelog = true;
            }
        }
    }

    /// Arms `callback`, replacing any registration of its key: the old
    /// deadline leaves the deadline order at once, so it can never fire. A
    /// replaced registration that was in the changelog leaves its record
    /// there, so the key stays marked as in the changelog.
    pub fn arm(&mut self, callback: &Callback) -> Armed {
        let mut entry = Entry {
            deadline: callback.deadline,
            reply_topic: callback.reply_topic,
            in_changelog: callback.in_changelog,
            packed: Packed::new(callback),
        };
        if let Some(slot) = self.find(&callback.key) {
            entry.in_changelog |= self.entry(slot).in_changelog;
            let old = self.slots[slot as usize]
                .replace(entry)
                .expect("indexed slot is full");
            self.by_deadline.remove(&(old.deadline, slot));
            self.by_deadline.insert((callback.deadline, slot));
            return Armed::Replaced {
                previous_deadline: old.deadline,
            };
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 callbacks");
                self.slots.push(Some(entry));
                slot
            }
        };
        let hash = self.hasher.hash_one(&callback.key);
        let Self {
            slots,
            by_key,
            hasher,
            ..
        } = self;
        by_key.insert_unique(hash, slot, |&s| hasher.hash_one(key_of(slots, s)));
        self.by_deadline.insert((callback.deadline, slot));
        Armed::New
    }

    /// Disarms `key`; returns whether it was armed, and if so whether the changelog holds it.
    pub fn cancel(&mut self, key: &str) -> Option<Disarmed> {
        let slot = self.find(key)?;
        Some(match self.remove(slot).in_changelog {
            true => Disarmed::InChangelog,
            false => Disarmed::InMemoryOnly,
        })
    }

    /// Removes and returns the earliest callback whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: i64) -> Option<Callback> {
        let &(deadline, slot) = self.by_deadline.first()?;
        (deadline <= now).then(|| self.remove(slot).unpack())
    }

    fn find(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.by_key
            .find(hash, |&slot| key_of(&self.slots, slot) == key)
            .copied()
    }

    fn entry(&self, slot: u32) -> &Entry {
        self.slots[slot as usize]
            .as_ref()
            .expect("indexed slot is full")
    }

    fn remove(&mut self, slot: u32) -> Entry {
        let entry = self.slots[slot as usize]
            .take()
            .expect("indexed slot is full");
        let hash = self.hasher.hash_one(entry.packed.key());
        self.by_key
            .find_entry(hash, |&s| s == slot)
            .expect("every slot is indexed by key")
            .remove();
        self.by_deadline.remove(&(entry.deadline, slot));
        self.free.push(slot);
        entry
    }
}

fn key_of(slots: &[Option<Entry>], slot: u32) -> &str {
    slots[slot as usize]
        .as_ref()
        .expect("indexed slot is full")
        .packed
        .key()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callback(key: &str, deadline: i64) -> Callback {
        Callback {
            key: key.into(),
            deadline,
            reply_topic: Topic::Hub,
            reply_key: format!("reply-{key}"),
            correlation_id: "corr".into(),
            context: r#"{"n":1}"#.into(),
            in_changelog: false,
        }
    }

    fn drain(store: &mut TimerStore, now: i64) -> Vec<(String, i64)> {
        std::iter::from_fn(|| store.pop_due(now))
            .map(|c| (c.key, c.deadline))
            .collect()
    }

    #[test]
    fn fires_in_deadline_order_and_not_before() {
        let mut store = TimerStore::default();
        store.arm(&callback("c", 30));
        store.arm(&callback("a", 10));
        store.arm(&callback("b", 20));
        assert_eq!(store.next_deadline(), Some(10));
        assert_eq!(store.pop_due(9), None);
        assert_eq!(drain(&mut store, 20), [("a".into(), 10), ("b".into(), 20)]);
        assert_eq!(store.len(), 1);
        assert_eq!(drain(&mut store, 100), [("c".into(), 30)]);
        assert!(store.is_empty());
        assert_eq!(store.next_deadline(), None);
    }

    #[test]
    fn a_popped_callback_comes_back_whole() {
        let mut store = TimerStore::default();
        let original = Callback {
            key: "ключ".into(),
            deadline: 5,
            reply_topic: Topic::SpeakerWorker,
            reply_key: String::new(),
            correlation_id: "c-1".into(),
            context: r#"{"flow":"f","nested":[1,2]}"#.into(),
            in_changelog: true,
        };
        store.arm(&original);
        assert_eq!(store.pop_due(5), Some(original));
    }

    #[test]
    fn re_register_replaces_without_early_firing() {
        let mut store = TimerStore::default();
        assert_eq!(store.arm(&callback("k", 10)), Armed::New);
        assert_eq!(
            store.arm(&callback("k", 50)),
            Armed::Replaced {
                previous_deadline: 10
            }
        );
        assert_eq!(store.len(), 1);
        assert_eq!(store.pop_due(49), None, "the old deadline must not fire");
        assert_eq!(drain(&mut store, 50), [("k".into(), 50)]);
        // An earlier re-registration moves the deadline forward just as well.
        store.arm(&callback("j", 50));
        store.arm(&callback("j", 5));
        assert_eq!(drain(&mut store, 5), [("j".into(), 5)]);
        assert!(store.is_empty());
    }

    #[test]
    fn cancel_removes_the_entry() {
        let mut store = TimerStore::default();
        store.arm(&callback("a", 10));
        store.arm(&callback("b", 10));
        assert_eq!(store.cancel("a"), Some(Disarmed::InMemoryOnly));
        assert_eq!(store.cancel("a"), None);
        assert_eq!(store.cancel("never-armed"), None);
        assert_eq!(store.deadline_of("a"), None);
        assert_eq!(store.deadline_of("b"), Some(10));
        assert_eq!(drain(&mut store, i64::MAX), [("b".into(), 10)]);
    }

    #[test]
    fn a_key_stays_in_the_changelog_until_disarmed() {
        let mut store = TimerStore::default();
        store.arm(&callback("k", 10));
        assert_eq!(store.get("k").map(|c| c.in_changelog), Some(false));
        store.set_in_changelog("k");
        // Re-registered: the changelog still holds the old record.
        store.arm(&callback("k", 20));
        assert_eq!(
            store.get("k").map(|c| (c.deadline, c.in_changelog)),
            Some((20, true))
        );
        assert_eq!(store.cancel("k"), Some(Disarmed::InChangelog));
        store.arm(&callback("k", 30));
        assert_eq!(store.pop_due(30).map(|c| c.in_changelog), Some(false));
    }

    #[test]
    fn slots_are_reused_and_keys_stay_distinct() {
        let mut store = TimerStore::default();
        for round in 0..3 {
            for i in 0..1_000 {
                store.arm(&callback(&format!("k{i}"), i64::from(i % 7)));
            }
            for i in (0..1_000).step_by(2) {
                assert!(store.cancel(&format!("k{i}")).is_some(), "round {round}");
            }
            assert_eq!(store.len(), 500);
            let fired = drain(&mut store, i64::MAX);
            assert_eq!(fired.len(), 500);
            assert!(fired.windows(2).all(|w| w[0].1 <= w[1].1));
            assert!(fired
                .iter()
                .all(|(k, _)| k[1..].parse::<u32>().unwrap() % 2 == 1));
        }
        assert!(store.slots.len() <= 1_000);
    }
}
