//! Retained messages kept across restarts, in a redb database in the state directory.
//!
//! The router sends every retained change over a channel; a writer task commits them
//! in batches (one transaction per batch), so a burst of retained publishes costs one
//! fsync per batch, not one per message. On a clean shutdown the channel closes and
//! the last batch is committed before the broker stops.
//!
//! Persistent sessions (subscriptions, queued and in-flight messages, expiry left) are
//! kept in the same database as snapshots: the broker writes one every
//! [`SESSION_SAVE_INTERVAL`] when a session changed, and a last one on shutdown. A
//! power cut or `kill -9` loses at most the session changes of that interval.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::mpsc;

use super::types::{Message, RetainedChange};

const RETAINED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// How often changed persistent sessions are written: the most a power cut can lose.
pub const SESSION_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors of the retained store.
#[derive(Debug, thiserror::Error)]
#[error("retained store {path}: {source}")]
pub struct StoreError {
    path: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The on-disk retained store of one broker.
#[derive(Clone)]
pub struct RetainedStore {
    db: Arc<Database>,
    path: String,
}

impl RetainedStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<RetainedStore, StoreError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError {
            path: path.display().to_string(),
            source: e,
        };
        crate::private_fs::create_file(path).map_err(|e| err(e.into()))?;
        // A small page cache: the store is read once at start and then only written;
        // redb's default (1 GiB) would keep every retained payload twice in memory.
        let db = Database::builder()
            .set_cache_size(8 * 1024 * 1024)
            .create(path)
            .map_err(|e| err(e.into()))?;
        let tx = db.begin_write().map_err(|e| err(e.into()))?;
        tx.open_table(RETAINED).map_err(|e| err(e.into()))?;
        tx.open_table(SESSIONS).map_err(|e| err(e.into()))?;
        tx.commit().map_err(|e| err(e.into()))?;
        Ok(RetainedStore {
            db: Arc::new(db),
            path: path.display().to_string(),
        })
    }

    /// Every stored retained message.
    pub fn load(&self) -> Result<Vec<Arc<Message>>, StoreError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError {
            path: self.path.clone(),
            source: e,
        };
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(RETAINED).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let (topic, value) = (k.value(), v.value());
            let Some((&qos, payload)) = value.split_first() else {
                continue;
            };
            if std::str::from_utf8(topic).is_err() || qos > 2 {
                continue;
            }
            out.push(Arc::new(Message {
                topic: Bytes::copy_from_slice(topic),
                payload: Bytes::copy_from_slice(payload),
                qos,
                retain: true,
                properties: None,
                origin: None,
                expires_at: None,
            }));
        }
        Ok(out)
    }

    /// Every saved session: client id and its encoded state.
    pub fn load_sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError {
            path: self.path.clone(),
            source: e,
        };
        let tx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(SESSIONS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Replaces the saved sessions with `sessions` in one transaction (blocking).
    pub fn save_sessions(&self, sessions: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError {
            path: self.path.clone(),
            source: e,
        };
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        tx.delete_table(SESSIONS).map_err(|e| err(e.into()))?;
        {
            let mut table = tx.open_table(SESSIONS).map_err(|e| err(e.into()))?;
            for (id, v) in sessions {
                table
                    .insert(id.as_str(), &v[..])
                    .map_err(|e| err(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err(e.into()))
    }

    /// Starts the writer task; it ends, after committing, when every sender is dropped.
    pub fn spawn_writer(
        &self,
    ) -> (
        mpsc::UnboundedSender<RetainedChange>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<RetainedChange>();
        let db = self.db.clone();
        let path = self.path.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 4096).await > 0 {
                let changes = std::mem::take(&mut batch);
                let db = db.clone();
                let res = tokio::task::spawn_blocking(move || write_batch(&db, changes)).await;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(store = %path, error = %e, "could not persist retained messages")
                    }
                    Err(e) => tracing::error!(store = %path, error = %e, "retained writer failed"),
                }
            }
        });
        (tx, task)
    }
}

fn write_batch(
    db: &Database,
    changes: Vec<RetainedChange>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(RETAINED)?;
        for c in changes {
            match c {
                RetainedChange::Set(m) => {
                    let mut v = Vec::with_capacity(1 + m.payload.len());
                    v.push(m.qos);
                    v.extend_from_slice(&m.payload);
                    table.insert(&m.topic[..], &v[..])?;
                }
                RetainedChange::Clear(topic) => {
                    table.remove(&topic[..])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}
