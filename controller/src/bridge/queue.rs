//! A bridge's store-and-forward queue: outbound messages on disk, in order, until the
//! remote acknowledges them.
//!
//! The store is redb (an embedded, crash-safe B-tree with ACID transactions), one
//! database file per bridge in the state directory, keyed by a sequence number.
//!
//! Durability policy:
//! - A batch of new messages is committed with `Durability::Immediate` (fsync) in one
//!   transaction. The bridge's local side writes whatever arrived while the previous
//!   commit ran as the next batch (group commit), so a burst costs one fsync per batch.
//! - Removals after the remote's acknowledgement are committed with
//!   `Durability::Eventual` (no fsync of their own). A crash can bring back messages
//!   the remote already has; they are sent again (at least once), never lost.
//!
//! Bound: at most `max_messages` messages and `max_bytes` bytes (topic + payload).
//! When a new message does not fit, the **oldest** messages are dropped to make room,
//! so the freshest data survives a long outage; every drop is counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, TableDefinition};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

/// One queued message, already mapped to its remote topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Remote topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it is sent with.
    pub qos: u8,
    /// Retain flag it is sent with.
    pub retain: bool,
}

impl QueuedMessage {
    /// Bytes it counts against `max_bytes`.
    pub fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(3 + self.topic.len() + self.payload.len());
        v.push(self.qos | (self.retain as u8) << 2);
        v.extend_from_slice(&(self.topic.len() as u16).to_be_bytes());
        v.extend_from_slice(self.topic.as_bytes());
        v.extend_from_slice(&self.payload);
        v
    }

    fn decode(b: &[u8]) -> Option<QueuedMessage> {
        let (&flags, rest) = b.split_first()?;
        let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let topic = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        Some(QueuedMessage {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(&rest[2 + len..]),
            qos: (flags & 3).min(2),
            retain: flags & 4 != 0,
        })
    }
}

/// Errors of the queue store.
#[derive(Debug, thiserror::Error)]
#[error("bridge queue {path}: {message}")]
pub struct QueueError {
    path: String,
    message: String,
}

/// The on-disk queue of one bridge. Shared by the bridge's local side (appends) and
/// remote side (reads, removes): reads never wait for a commit (redb's MVCC); writers
/// hold `writer` for the whole transaction, so the counters always match what is
/// committed; `len` and `bytes` publish them to readers without waiting.
pub struct Queue {
    db: Database,
    path: PathBuf,
    bounds: Mutex<(u64, u64)>,
    writer: Mutex<Counts>,
    len: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Counts {
    len: u64,
    bytes: u64,
    next_seq: u64,
}

/// Result of a push.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Messages stored.
    pub stored: u64,
    /// Messages dropped to stay within the bound (old ones, or a new one larger than
    /// the whole byte bound).
    pub dropped: u64,
}

impl Queue {
    /// Opens (or creates) the queue at `path`, with its bounds. Messages already there
    /// (from before a restart) are kept; if they exceed new, smaller bounds, the oldest
    /// are dropped at the next push.
    pub fn open(path: &Path, max_messages: u64, max_bytes: u64) -> Result<Queue, QueueError> {
        let err = |e: &dyn std::fmt::Display| QueueError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        crate::private_fs::create_file(path).map_err(|e| err(&e))?;
        // A small page cache: the queue is read once, in order.
        let db = Database::builder()
            .set_cache_size(4 * 1024 * 1024)
            .create(path)
            .map_err(|e| err(&e))?;
        let (mut len, mut bytes, mut next_seq) = (0, 0, 1);
        {
            let tx = db.begin_write().map_err(|e| err(&e))?;
            {
                let table = tx.open_table(MESSAGES).map_err(|e| err(&e))?;
                for row in table.iter().map_err(|e| err(&e))? {
                    let (k, v) = row.map_err(|e| err(&e))?;
                    len += 1;
                    bytes += QueuedMessage::decode(v.value()).map_or(0, |m| m.size());
                    next_seq = k.value() + 1;
                }
            }
            tx.commit().map_err(|e| err(&e))?;
        }
        Ok(Queue {
            db,
            path: path.to_path_buf(),
            bounds: Mutex::new((max_messages.max(1), max_bytes.max(1))),
            writer: Mutex::new(Counts {
                len,
                bytes,
                next_seq,
            }),
            len: AtomicU64::new(len),
            bytes: AtomicU64::new(bytes),
        })
    }

    fn err(&self, e: &dyn std::fmt::Display) -> QueueError {
        QueueError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, c: &Counts) {
        self.len.store(c.len, Ordering::Release);
        self.bytes.store(c.bytes, Ordering::Release);
    }

    /// Messages queued.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued (topics and payloads).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Sets new bounds (a changed Bridge); they apply from the next push.
    pub fn set_bounds(&self, max_messages: u64, max_bytes: u64) {
        *self.bounds.lock().unwrap_or_else(|p| p.into_inner()) =
            (max_messages.max(1), max_bytes.max(1));
    }

    /// Appends messages in order and commits them durably (fsync) in one transaction,
    /// dropping the oldest to stay within the bounds.
    pub fn push(&self, msgs: &[QueuedMessage]) -> Result<Pushed, QueueError> {
        let mut out = Pushed::default();
        if msgs.is_empty() {
            return Ok(out);
        }
        let (max_messages, max_bytes) = *self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = self.writer();
        let Counts {
            mut len,
            mut bytes,
            next_seq: mut next,
        } = *counts;
        let mut tx = self.db.begin_write().map_err(|e| self.err(&e))?;
        tx.set_durability(Durability::Immediate);
        {
            let mut table = tx.open_table(MESSAGES).map_err(|e| self.err(&e))?;
            for m in msgs {
                let size = m.size();
                if size > max_bytes {
                    out.dropped += 1;
                    continue;
                }
                while len > 0 && (len + 1 > max_messages || bytes + size > max_bytes) {
                    let popped = table.pop_first().map_err(|e| self.err(&e))?;
                    let Some((_, v)) = popped else { break };
                    bytes -= QueuedMessage::decode(v.value()).map_or(0, |m| m.size());
                    len -= 1;
                    out.dropped += 1;
                }
                table
                    .insert(next, m.encode().as_slice())
                    .map_err(|e| self.err(&e))?;
                next += 1;
                len += 1;
                bytes += size;
                out.stored += 1;
            }
        }
        tx.commit().map_err(|e| self.err(&e))?;
        *counts = Counts {
            len,
            bytes,
            next_seq: next,
        };
        self.publish(&counts);
        Ok(out)
    }

    /// Up to `max` messages with a sequence number above `after`, in order.
    pub fn read_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, QueuedMessage)>, QueueError> {
        let tx = self.db.begin_read().map_err(|e| self.err(&e))?;
        let table = tx.open_table(MESSAGES).map_err(|e| self.err(&e))?;
        let mut out = Vec::new();
        for row in table
            .range(after.saturating_add(1)..)
            .map_err(|e| self.err(&e))?
        {
            let (k, v) = row.map_err(|e| self.err(&e))?;
            if let Some(m) = QueuedMessage::decode(v.value()) {
                out.push((k.value(), m));
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Removes delivered messages (the remote acknowledged them). Not fsynced on its
    /// own: after a crash they may be sent again, never lost.
    pub fn remove(&self, seqs: &[u64]) -> Result<(), QueueError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut counts = self.writer();
        let Counts {
            mut len, mut bytes, ..
        } = *counts;
        let mut tx = self.db.begin_write().map_err(|e| self.err(&e))?;
        tx.set_durability(Durability::Eventual);
        {
            let mut table = tx.open_table(MESSAGES).map_err(|e| self.err(&e))?;
            for s in seqs {
                if let Some(v) = table.remove(s).map_err(|e| self.err(&e))? {
                    len -= 1;
                    bytes -= QueuedMessage::decode(v.value()).map_or(0, |m| m.size());
                }
            }
        }
        tx.commit().map_err(|e| self.err(&e))?;
        (counts.len, counts.bytes) = (len, bytes);
        self.publish(&counts);
        Ok(())
    }

    /// Number of stored rows, read from the table, to check the counters against.
    #[cfg(test)]
    fn stored_rows(&self) -> Result<u64, QueueError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().map_err(|e| self.err(&e))?;
        let table = tx.open_table(MESSAGES).map_err(|e| self.err(&e))?;
        table.len().map_err(|e| self.err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(topic: &str, payload: &str) -> QueuedMessage {
        QueuedMessage {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: 1,
            retain: false,
        }
    }

    #[test]
    fn messages_come_back_in_order_after_a_reopen_and_removed_ones_stay_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        {
            let q = Queue::open(&path, 100, 1 << 20).unwrap();
            let batch: Vec<_> = (0..10).map(|i| m("t", &i.to_string())).collect();
            assert_eq!(q.push(&batch).unwrap().stored, 10);
            let first = q.read_after(0, 3).unwrap();
            let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
            q.remove(&seqs).unwrap();
            assert_eq!(q.len(), 7);
        }
        let q = Queue::open(&path, 100, 1 << 20).unwrap();
        assert_eq!((q.len(), q.stored_rows().unwrap()), (7, 7));
        let rest: Vec<String> = q
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, m)| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(rest, ["3", "4", "5", "6", "7", "8", "9"]);
    }

    #[test]
    fn at_the_bound_the_oldest_messages_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.redb"), 5, 1 << 20).unwrap();
        let batch: Vec<_> = (0..8).map(|i| m("t", &i.to_string())).collect();
        assert_eq!(
            q.push(&batch).unwrap(),
            Pushed {
                stored: 8,
                dropped: 3
            }
        );
        let left: Vec<String> = q
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, m)| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(left, ["3", "4", "5", "6", "7"]);

        // The byte bound: 4 messages of 1 + 10 bytes fit in 45 bytes.
        let q = Queue::open(&dir.path().join("b.redb"), 100, 45).unwrap();
        let big: Vec<_> = (0..6).map(|i| m("t", &format!("{i:010}"))).collect();
        assert_eq!(q.push(&big).unwrap().dropped, 2);
        assert_eq!((q.len(), q.bytes()), (4, 44));
        // A message larger than the whole bound is dropped itself.
        assert_eq!(q.push(&[m("t", &"x".repeat(100))]).unwrap().dropped, 1);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn encoding_round_trips_flags_topic_and_binary_payload() {
        let msg = QueuedMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(&[0, 255, 1]),
            qos: 2,
            retain: true,
        };
        assert_eq!(QueuedMessage::decode(&msg.encode()), Some(msg));
    }
}
