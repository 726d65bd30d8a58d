//! The records inside a stored batch, as far as compaction needs them: each
//! record's offset delta, key and whether it is a tombstone, and the batch
//! rewritten without some of its records.
//!
//! tansu's `inflated::Batch` decodes every byte of every value through a
//! generic reader, one byte at a time; reading the keys of every compacted
//! batch that way took a fifth of `wfm up`'s CPU under load. A record of
//! Kafka's batch format v2 says its own length, so its key can be found,
//! and the record copied whole, without touching the value.
//! Compressed batches are not read here: their records are kept.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use tansu_sans_io::record::deflated;

/// Attributes bits that name the compression codec.
const COMPRESSION_MASK: i16 = 0b111;
/// Bytes of a batch counted in `batch_length` besides its records.
const FIXED_BATCH_LENGTH: usize = 49;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    pub delta: i32,
    pub key: Bytes,
    pub tombstone: bool,
}

/// One record: its offset delta, its key if it has one, and where it lies
/// in `record_data`.
struct Span {
    delta: i32,
    key: Option<RecordKey>,
    range: Range<usize>,
}

/// The keyed records of `batch`, or `None` when they cannot be read here
/// (compressed, or not well formed).
pub fn keys(batch: &deflated::Batch) -> Option<Vec<RecordKey>> {
    Some(
        spans(batch)?
            .into_iter()
            .filter_map(|span| span.key)
            .collect(),
    )
}

/// `batch` without the records whose offset deltas are in `dead`: same base
/// offset and last offset delta (offsets never move), fresh length, count and
/// CRC. `None` when its records cannot be read here.
pub fn without(batch: &deflated::Batch, dead: &[i32]) -> Option<deflated::Batch> {
    let data = &batch.record_data;
    let mut kept = BytesMut::with_capacity(data.len());
    let mut count = 0u32;
    for span in spans(batch)? {
        if !dead.contains(&span.delta) {
            kept.put_slice(&data[span.range]);
            count += 1;
        }
    }
    let record_data = kept.freeze();
    let mut rewritten = deflated::Batch {
        batch_length: i32::try_from(FIXED_BATCH_LENGTH + record_data.len()).ok()?,
        record_count: count,
        record_data,
        ..batch.clone()
    };
    rewritten.crc = crc(&rewritten);
    Some(rewritten)
}

/// CRC-32C over everything after the CRC field, as Kafka computes it.
fn crc(batch: &deflated::Batch) -> u32 {
    let mut covered = BytesMut::with_capacity(40 + batch.record_data.len());
    covered.put_i16(batch.attributes);
    covered.put_i32(batch.last_offset_delta);
    covered.put_i64(batch.base_timestamp);
    covered.put_i64(batch.max_timestamp);
    covered.put_i64(batch.producer_id);
    covered.put_i16(batch.producer_epoch);
    covered.put_i32(batch.base_sequence);
    covered.put_u32(batch.record_count);
    covered.put_slice(&batch.record_data);
    let checksum = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &covered);
    u32::try_from(checksum).expect("a CRC-32 fits 32 bits")
}

fn spans(batch: &deflated::Batch) -> Option<Vec<Span>> {
    if batch.attributes & COMPRESSION_MASK != 0 {
        return None;
    }
    let data = &batch.record_data[..];
    let mut at = 0;
    let mut spans = Vec::with_capacity(usize::try_from(batch.record_count).ok()?);
    for _ in 0..batch.record_count {
        let mut cursor = Cursor { data, at };
        let length = usize::try_from(cursor.varint()?).ok()?;
        let body = cursor.at..cursor.at.checked_add(length)?;
        let (delta, key) = read_record(data.get(body.clone())?)?;
        spans.push(Span {
            delta,
            key,
            range: at..body.end,
        });
        at = body.end;
    }
    Some(spans)
}

/// The offset delta and the key of a record's body (after its length).
fn read_record(body: &[u8]) -> Option<(i32, Option<RecordKey>)> {
    let mut cursor = Cursor { data: body, at: 0 };
    cursor.skip(1)?; // attributes
    cursor.varint()?; // timestamp delta
    let delta = i32::try_from(cursor.varint()?).ok()?;
    let key = cursor.bytes()?;
    let value = cursor.bytes()?;
    let key = key.map(|key| RecordKey {
        delta,
        key: Bytes::copy_from_slice(key),
        tombstone: value.is_none(),
    });
    Some((delta, key))
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip(&mut self, n: usize) -> Option<()> {
        self.at = self.at.checked_add(n).filter(|at| *at <= self.data.len())?;
        Some(())
    }

    /// A zig-zag varint, as Kafka writes lengths and deltas in records.
    fn varint(&mut self) -> Option<i64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    }

    /// A length-prefixed byte string; a negative length is null.
    fn bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let length = self.varint()?;
        if length < 0 {
            return Some(None);
        }
        let start = self.at;
        self.skip(usize::try_from(length).ok()?)?;
        Some(Some(&self.data[start..self.at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tansu_sans_io::record::{inflated, Record};
    use tansu_sans_io::{BatchAttribute, Compression};

    fn batch(records: &[(Option<&str>, Option<&str>)]) -> deflated::Batch {
        let mut builder = inflated::Batch::builder()
            .last_offset_delta(i32::try_from(records.len()).unwrap() - 1)
            .producer_id(7)
            .base_sequence(3);
        for (delta, (key, value)) in records.iter().enumerate() {
            let bytes = |s: &Option<&str>| s.map(|s| Bytes::copy_from_slice(s.as_bytes()));
            builder = builder.record(
                Record::builder()
                    .offset_delta(i32::try_from(delta).unwrap())
                    .key(bytes(key))
                    .value(bytes(value)),
            );
        }
        deflated::Batch::try_from(builder.build().unwrap()).unwrap()
    }

    fn key(delta: i32, key: &str, tombstone: bool) -> RecordKey {
        RecordKey {
            delta,
            key: Bytes::copy_from_slice(key.as_bytes()),
            tombstone,
        }
    }

    #[test]
    fn keys_and_tombstones_are_read_without_the_values() {
        let long = "v".repeat(5_000);
        let batch = batch(&[
            (Some("a"), Some(&long)),
            (None, Some("unkeyed")),
            (Some("b"), None),
        ]);
        assert_eq!(
            keys(&batch).unwrap(),
            [key(0, "a", false), key(2, "b", true)]
        );
    }

    #[test]
    fn a_batch_without_some_records_is_what_tansu_would_write() {
        let original = batch(&[
            (Some("a"), Some("1")),
            (Some("b"), Some("2")),
            (Some("c"), None),
        ]);
        let rewritten = without(&original, &[1]).unwrap();
        // tansu reads it back (it checks the CRC) with the offsets unchanged.
        let inflated = inflated::Batch::try_from(&rewritten).unwrap();
        let left: Vec<(i32, Option<Bytes>)> = inflated
            .records
            .iter()
            .map(|r| (r.offset_delta, r.key()))
            .collect();
        assert_eq!(
            left,
            [
                (0, Some(Bytes::from_static(b"a"))),
                (2, Some(Bytes::from_static(b"c")))
            ]
        );
        assert_eq!(rewritten.last_offset_delta, 2);
        assert_eq!(rewritten.record_count, 2);
        let expected = inflated::Batch::builder()
            .last_offset_delta(2)
            .producer_id(7)
            .base_sequence(3)
            .base_timestamp(original.base_timestamp)
            .max_timestamp(original.max_timestamp)
            .record(inflated.records[0].clone().into())
            .record(inflated.records[1].clone().into())
            .build()
            .and_then(deflated::Batch::try_from)
            .unwrap();
        assert_eq!(rewritten.crc, expected.crc);
        assert_eq!(rewritten.batch_length, expected.batch_length);
        assert_eq!(
            keys(&rewritten).unwrap(),
            [key(0, "a", false), key(2, "c", true)]
        );
    }

    #[test]
    fn compressed_or_truncated_batches_are_not_read() {
        let mut compressed = batch(&[(Some("a"), Some("1"))]);
        compressed.attributes = BatchAttribute::default()
            .compression(Compression::Lz4)
            .into();
        assert!(keys(&compressed).is_none());
        let mut truncated = batch(&[(Some("a"), Some("1"))]);
        truncated.record_data = truncated.record_data.slice(..3);
        assert!(keys(&truncated).is_none());
        assert!(without(&truncated, &[0]).is_none());
    }
}
