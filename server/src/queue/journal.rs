//! A read-only reader of fjall 3's journal files (`<queue>/<n>.jnl`), for the damage check
//! at startup and the salvage of a damaged store ([`crate::queue::recovery`]).
//!
//! fjall's own replay stops at the first entry it cannot decode and truncates the file there,
//! in place: 200 bad bytes in the middle of a journal silently lose every batch after them,
//! and destroy them on disk. Only a batch that decodes with a wrong checksum is an error. So
//! the journal is looked at here first, without writing to it.
//!
//! # The format (fjall 3.1, `src/journal/entry.rs`; integers little-endian)
//! A batch is a start entry, its items, and an end entry:
//! - start: tag `1`, `u32` item count, `u64` sequence number;
//! - item: tag `2`, value type (`0` value, `1` tombstone, `2` weak tombstone), compression
//!   (`0` none, `1` LZ4 block), `u64` keyspace id, `u16` key length, `u32` value length,
//!   `u32` stored value length, the key, the stored value;
//! - clear (a whole keyspace emptied): tag `4`, `u64` keyspace id;
//! - end: tag `3`, `u64` checksum (XXH3-64 of the item and clear entries as stored), the
//!   trailer `FJL\x03`.
//!
//! A journal is batches back to back, then zeros or nothing (fjall preallocates new files).
//! After a crash the last batch may be torn; that is normal and no damage. Damage is a batch
//! that does not read (bad bytes, a wrong checksum) followed by one that does: the reader
//! skips to the next batch that reads (a start entry whose batch checks) and reports the
//! skipped range.

use std::ops::Range;

/// The trailer that ends every end entry.
const TRAILER: &[u8] = b"FJL\x03";

/// One entry of a batch that reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A key written (`value`), or removed (`None`).
    Write {
        /// fjall's internal keyspace id.
        keyspace: u64,
        /// The key.
        key: &'a [u8],
        /// The value, `None` for a tombstone.
        value: Option<Vec<u8>>,
    },
    /// A whole keyspace emptied.
    Clear {
        /// fjall's internal keyspace id.
        keyspace: u64,
    },
}

/// A batch that reads, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The batch's sequence number.
    pub seqno: u64,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its entries, in order.
    pub items: Vec<Item<'a>>,
}

/// What [`scan`] found in one journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// How many batches read.
    pub batches: usize,
    /// Ranges that do not read, each followed by a batch that does: damage.
    pub damaged: Vec<Range<u64>>,
    /// Where the last batch that reads ends; after it, a torn batch or zeros.
    pub end: u64,
    /// Whether non-zero bytes follow `end` (a batch torn by a crash, or a damaged tail).
    pub torn_tail: bool,
}

impl Scan {
    /// Whether the journal is damaged (fjall would lose or refuse batches that read).
    pub fn is_damaged(&self) -> bool {
        !self.damaged.is_empty()
    }
}

/// Reads every batch of the journal `bytes`, handing each one that reads to `each`.
pub fn scan<'a>(bytes: &'a [u8], mut each: impl FnMut(Batch<'a>)) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    let mut bad_from: Option<usize> = None;
    while at < bytes.len() {
        match batch(bytes, at) {
            Some((b, next)) => {
                if let Some(from) = bad_from.take() {
                    out.damaged.push(from as u64..at as u64);
                }
                out.batches += 1;
                out.end = next as u64;
                each(b);
                at = next;
            }
            None => {
                if bad_from.is_none() {
                    // The rest is all zeros: the end of the journal.
                    if bytes[at..].iter().all(|&b| b == 0) {
                        break;
                    }
                    bad_from = Some(at);
                }
                // Resynchronise on the next start tag.
                at = match bytes[at + 1..].iter().position(|&b| b == 1) {
                    Some(p) => at + 1 + p,
                    None => bytes.len(),
                };
            }
        }
    }
    out.torn_tail = bad_from.is_some();
    out
}

/// The batch starting at `at`, and where the next one starts, if it reads and checks.
fn batch(bytes: &[u8], at: usize) -> Option<(Batch<'_>, usize)> {
    let mut r = Cursor { bytes, at };
    if r.u8()? != 1 {
        return None;
    }
    let count = r.u32()?;
    let seqno = r.u64()?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    // Each entry is at least 9 bytes: a count the file cannot hold is damage.
    if count as usize > (bytes.len() - r.at) / 9 {
        return None;
    }
    let mut items = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let start = r.at;
        let item = match r.u8()? {
            2 => {
                let value_type = r.u8()?;
                let compression = r.u8()?;
                let keyspace = r.u64()?;
                let key_len = r.u16()? as usize;
                let value_len = r.u32()? as usize;
                let stored_len = r.u32()? as usize;
                let key = r.take(key_len)?;
                let stored = r.take(stored_len)?;
                let value = match (value_type, compression) {
                    (0, 0) => Some(stored.to_vec()),
                    (0, 1) => {
                        let mut out = vec![0; value_len];
                        let n = lz4_flex::block::decompress_into(stored, &mut out).ok()?;
                        (n == value_len).then_some(out)
                    }
                    (1 | 2, _) => None,
                    _ => return None,
                };
                Item::Write {
                    keyspace,
                    key,
                    value,
                }
            }
            4 => Item::Clear { keyspace: r.u64()? },
            _ => return None,
        };
        hasher.update(&bytes[start..r.at]);
        items.push(item);
    }
    if r.u8()? != 3 {
        return None;
    }
    let checksum = r.u64()?;
    if r.take(TRAILER.len())? != TRAILER || checksum != hasher.digest() {
        return None;
    }
    let offset = at as u64;
    Some((
        Batch {
            seqno,
            offset,
            items,
        },
        r.at,
    ))
}

/// Takes little-endian fields from the front.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal file of a fresh fjall store in `dir` holding `n` small writes, each synced.
    fn journal(dir: &std::path::Path, n: usize) -> Vec<u8> {
        {
            let db = fjall::Database::builder(dir).open().expect("open");
            let ks = db
                .keyspace("k", fjall::KeyspaceCreateOptions::default)
                .expect("keyspace");
            for i in 0..n {
                // Every tenth value is large enough for fjall to compress it.
                let value = if i % 10 == 0 {
                    vec![b'x'; 10_000]
                } else {
                    format!("value {i}").into_bytes()
                };
                ks.insert(format!("key{i:04}"), value).expect("insert");
                db.persist(fjall::PersistMode::SyncAll).expect("sync");
            }
        }
        let name = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "jnl"))
            .expect("a journal");
        std::fs::read(name).expect("read")
    }

    fn keys(bytes: &[u8]) -> (Scan, Vec<String>) {
        let mut keys = Vec::new();
        let scan = scan(bytes, |b| {
            for item in b.items {
                if let Item::Write { key, value, .. } = item
                    && key.starts_with(b"key")
                {
                    assert!(value.is_some(), "a value");
                    keys.push(String::from_utf8_lossy(key).into_owned());
                }
            }
        });
        (scan, keys)
    }

    /// Every batch of a healthy journal reads (compressed values too); a cut tail is a torn
    /// tail, never damage; bad bytes in the middle are damage, and the batches after them
    /// still read.
    #[test]
    fn batches_read_and_damage_is_told_from_a_torn_tail() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bytes = journal(tmp.path(), 50);
        let (healthy, keys_read) = keys(&bytes);
        assert!(!healthy.is_damaged() && !healthy.torn_tail, "{healthy:?}");
        assert_eq!(keys_read.len(), 50);
        let end = healthy.end as usize;

        let (cut, keys_read) = keys(&bytes[..end - 7]);
        assert!(!cut.is_damaged() && cut.torn_tail, "{cut:?}");
        assert_eq!(keys_read.len(), 49);

        for fill in [0x00, 0xA5] {
            let mut bad = bytes[..end].to_vec();
            bad[end / 2..end / 2 + 200].fill(fill);
            let (scan, keys_read) = keys(&bad);
            assert!(
                scan.is_damaged() && !scan.torn_tail,
                "fill {fill:#x}: {scan:?}"
            );
            assert!(
                keys_read.len() >= 44 && keys_read.contains(&"key0049".to_string()),
                "fill {fill:#x}: {keys_read:?}"
            );
        }
    }
}
