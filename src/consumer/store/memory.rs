use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{CursorChange, CursorStore, StoreError};
use crate::consumer::DeadLetter;
use crate::protocol::Cursor;

/// A cursor store in memory, with rows of your type `R` as the effects: for
/// tests and examples, and as the model of what a database store does.
///
/// The handler gets a [`MemoryTransaction`] and
/// [`insert`](MemoryTransaction::insert)s rows in it; the rows, the dead
/// letters and the cursors of a page become visible together at commit, or
/// not at all. Clones share the same data; it lives as long as they do.
/// Every partition is this instance's.
///
/// ```
/// use zeroeventhub::consumer::MemoryStore;
///
/// let store: MemoryStore<String> = MemoryStore::new();
/// assert!(store.rows().is_empty());
/// ```
pub struct MemoryStore<R = ()> {
    data: Arc<Mutex<Data<R>>>,
}

struct Data<R> {
    cursors: BTreeMap<(String, u32), Cursor>,
    rows: Vec<R>,
    dead_letters: Vec<(String, DeadLetter)>,
}

/// A transaction of a [`MemoryStore`]: what the page wrote, applied at
/// commit, dropped otherwise.
pub struct MemoryTransaction<R> {
    rows: Vec<R>,
    changes: Vec<(String, CursorChange)>,
    dead_letters: Vec<(String, DeadLetter)>,
}

impl<R> MemoryTransaction<R> {
    /// Writes a row, visible in [`MemoryStore::rows`] once committed.
    pub fn insert(&mut self, row: R) {
        self.rows.push(row);
    }

    /// The rows written so far in this transaction.
    pub fn rows(&self) -> &[R] {
        &self.rows
    }
}

impl<R> MemoryStore<R> {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            data: Arc::new(Mutex::new(Data {
                cursors: BTreeMap::new(),
                rows: Vec::new(),
                dead_letters: Vec::new(),
            })),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data<R>> {
        // Nothing panics while holding the lock; recover the data if a
        // caller's panic ever poisoned it.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The committed rows, in commit order.
    pub fn rows(&self) -> Vec<R>
    where
        R: Clone,
    {
        self.data().rows.clone()
    }

    /// The committed cursors of `consumer`, by partition.
    pub fn cursors(&self, consumer: &str) -> Vec<(u32, Cursor)> {
        self.data()
            .cursors
            .iter()
            .filter(|((name, _), _)| name == consumer)
            .map(|((_, partition), cursor)| (*partition, cursor.clone()))
            .collect()
    }

    /// The committed dead letters of `consumer`, in commit order.
    pub fn dead_letters(&self, consumer: &str) -> Vec<DeadLetter> {
        self.data()
            .dead_letters
            .iter()
            .filter(|(name, _)| name == consumer)
            .map(|(_, letter)| letter.clone())
            .collect()
    }
}

impl<R> Default for MemoryStore<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> Clone for MemoryStore<R> {
    fn clone(&self) -> Self {
        MemoryStore {
            data: Arc::clone(&self.data),
        }
    }
}

impl<R> fmt::Debug for MemoryStore<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.data();
        f.debug_struct("MemoryStore")
            .field("cursors", &data.cursors)
            .field("rows", &data.rows.len())
            .field("dead_letters", &data.dead_letters.len())
            .finish()
    }
}

impl<R: Send + 'static> CursorStore for MemoryStore<R> {
    type Transaction = MemoryTransaction<R>;

    async fn begin(&self) -> Result<MemoryTransaction<R>, StoreError> {
        Ok(MemoryTransaction {
            rows: Vec::new(),
            changes: Vec::new(),
            dead_letters: Vec::new(),
        })
    }

    async fn load(
        &self,
        consumer: &str,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Cursor)>, StoreError> {
        let data = self.data();
        let mut cursors: Vec<(u32, Cursor)> = partitions
            .iter()
            .map(|&partition| {
                let stored = data.cursors.get(&(consumer.to_owned(), partition)).cloned();
                (partition, stored.unwrap_or_else(Cursor::first))
            })
            .collect();
        cursors.sort_by_key(|(partition, _)| *partition);
        Ok(cursors)
    }

    async fn save(
        &self,
        transaction: &mut MemoryTransaction<R>,
        consumer: &str,
        changes: &[CursorChange],
    ) -> Result<(), StoreError> {
        // Checked at commit, under the lock, as a database checks the rows
        // it updates.
        transaction.changes.extend(
            changes
                .iter()
                .map(|change| (consumer.to_owned(), change.clone())),
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        transaction: &mut MemoryTransaction<R>,
        consumer: &str,
        letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        transaction
            .dead_letters
            .push((consumer.to_owned(), letter.clone()));
        Ok(())
    }

    async fn commit(&self, transaction: MemoryTransaction<R>) -> Result<(), StoreError> {
        let mut data = self.data();
        for (consumer, change) in &transaction.changes {
            let stored = data
                .cursors
                .get(&(consumer.clone(), change.partition))
                .cloned()
                .unwrap_or_else(Cursor::first);
            if stored != change.previous {
                return Err(StoreError::conflict(change.partition));
            }
        }
        for (consumer, change) in transaction.changes {
            data.cursors
                .insert((consumer, change.partition), change.next);
        }
        data.rows.extend(transaction.rows);
        data.dead_letters.extend(transaction.dead_letters);
        Ok(())
    }

    async fn claim(&self, _consumer: &str, partition_count: u32) -> Result<Vec<u32>, StoreError> {
        Ok((0..partition_count).collect())
    }

    async fn release(&self, _consumer: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
