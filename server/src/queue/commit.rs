//! Group commit: one fsync acknowledges every write made by every session since the last one.
//!
//! A [`Committer`] owns a dedicated thread (fjall is blocking; the executor never waits on a
//! disk). A session writes its body chunks without syncing, then hands its last writes (the
//! last chunk, the envelope) to the thread with [`Committer::write_and_sync`]: one trip to a
//! thread per message for both. The committer runs every waiting request's writes, in order,
//! before the fsync that answers them. (A delivery worker, already on a blocking thread,
//! writes itself and calls [`Committer::sync_blocking`].) The thread takes the first waiting
//! request, then every other request already queued, makes their writes, calls [`Store::sync`]
//! once, and answers all of them with its result. Writes
//! that happened before a request was sent are in the journal before the fsync that answers it,
//! so each answer means "your writes are durable". While one fsync runs, new requests pile up
//! and share the next one: the fsync rate stays what the disk allows, and messages per fsync
//! grow with the number of concurrent sessions.
//!
//! If a write or an fsync fails, fjall poisons the database and the requests of that batch
//! fail (sessions answer 451, or 452 when the disk is full); the store opens the database
//! again ([`crate::queue::store`]), and a batch whose writes straddle the reopening fails too
//! rather than answer for writes the new opening may not have.

use std::sync::Arc;
use std::thread;

use async_channel::{Receiver, Sender};

use crate::queue::store::{Store, StoreError};

/// The answer to one request: durable, or why not.
type Outcome = Result<(), Arc<StoreError>>;

/// Why writes were not made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The committer thread is gone (the server is stopping).
    #[error("the committer has stopped")]
    Stopped,
    /// The store refused the writes or the fsync.
    #[error("{0}")]
    Store(Arc<StoreError>),
}

impl CommitError {
    /// Whether the writes failed on a full disk.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CommitError::Store(e) if e.is_disk_full())
    }
}

/// Writes a request asks the committer to make before its fsync.
type Writes = Box<dyn FnOnce(&Store) -> Result<(), StoreError> + Send>;

/// One request: optional writes, and where to send the answer.
struct Request {
    writes: Option<Writes>,
    reply: Sender<Outcome>,
}

/// The handle sessions and workers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    requests: Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("writes", &self.writes.is_some())
            .finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts the committer thread for `store`. It stops when every handle is dropped.
    pub fn start(store: Store) -> std::io::Result<Committer> {
        let (requests, waiting) = async_channel::unbounded();
        thread::Builder::new()
            .name("postern-commit".into())
            .spawn(move || {
                run(&store, &waiting);
            })?;
        Ok(Committer { requests })
    }

    /// Has the committer thread make `writes`, then waits until they (and every write this task
    /// made before the call) are durable. A failed write fails only this request.
    pub async fn write_and_sync(
        &self,
        writes: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), CommitError> {
        self.request(Some(Box::new(writes))).await
    }

    /// Sends one request and waits for its answer.
    async fn request(&self, writes: Option<Writes>) -> Result<(), CommitError> {
        let (reply, rx) = async_channel::bounded(1);
        self.requests
            .send(Request { writes, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        match rx.recv().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CommitError::Store(e)),
            Err(_) => Err(CommitError::Stopped),
        }
    }

    /// Waits, on a blocking thread, until every write this thread made before the call is
    /// durable.
    pub fn sync_blocking(&self) -> Result<(), CommitError> {
        let (reply, rx) = async_channel::bounded(1);
        self.requests
            .send_blocking(Request {
                writes: None,
                reply,
            })
            .map_err(|_| CommitError::Stopped)?;
        match rx.recv_blocking() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CommitError::Store(e)),
            Err(_) => Err(CommitError::Stopped),
        }
    }
}

/// The committer thread: batch, make the batch's writes, fsync once, answer all. Returns how
/// many fsyncs it made, once every handle is gone.
fn run(store: &Store, waiting: &Receiver<Request>) -> u64 {
    let mut batch = Vec::new();
    let mut fsyncs = 0;
    while let Ok(first) = waiting.recv_blocking() {
        fsyncs += 1;
        batch.push(first);
        while let Ok(more) = waiting.try_recv() {
            batch.push(more);
        }
        // A store opened again (after a failed write) between these writes and the fsync
        // may have lost them: then nothing in the batch is durable.
        let generation = store.generation();
        let written: Vec<Option<Outcome>> = batch
            .iter_mut()
            .map(|r| {
                let writes = r.writes.take()?;
                writes(store).err().map(|e| Err(Arc::new(e)))
            })
            .collect();
        let outcome: Outcome = store
            .sync()
            .and_then(|()| {
                if store.generation() == generation {
                    Ok(())
                } else {
                    Err(StoreError::Reopened)
                }
            })
            .map_err(Arc::new);
        for (request, failed) in batch.drain(..).zip(written) {
            // A requester that went away (its connection closed) needs no answer.
            let _ = request
                .reply
                .try_send(failed.unwrap_or_else(|| outcome.clone()));
        }
    }
    fsyncs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueId;
    use crate::queue::store::Envelope;

    #[test]
    fn concurrent_writers_are_all_acknowledged_and_durable() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let writers = 64;
        let per_writer = 8;
        let mut acknowledged = Vec::new();
        {
            let store = Store::open(tmp.path()).expect("open");
            let committer = Committer::start(store.clone()).expect("start");
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let store = store.clone();
                    let committer = committer.clone();
                    smol::spawn(async move {
                        let mut ids = Vec::new();
                        for m in 0..per_writer {
                            let id = QueueId::new();
                            // As a session does: the body first, unsynced, on a blocking
                            // thread; then the envelope through the committer.
                            let (s, i) = (store.clone(), id.clone());
                            smol::unblock(move || {
                                s.put_chunk(
                                    &i,
                                    0,
                                    format!("body <w{w}.m{m}@example.test>").as_bytes(),
                                )
                            })
                            .await
                            .expect("chunk");
                            let i = id.clone();
                            committer
                                .write_and_sync(move |s| s.put_envelope(&i, &envelope(w, m)))
                                .await
                                .expect("durable");
                            ids.push(id);
                        }
                        ids
                    })
                })
                .collect();
            smol::block_on(async {
                for t in tasks {
                    acknowledged.extend(t.await);
                }
            });
        }
        assert_eq!(acknowledged.len(), writers * per_writer);
        // Reopen: everything acknowledged is there, with its body.
        let store = Store::open(tmp.path()).expect("reopen");
        let mut ids = store.ids().expect("ids");
        ids.sort();
        acknowledged.sort();
        assert_eq!(ids, acknowledged);
        for id in &ids {
            let e = store.envelope(id).expect("read").expect("present");
            let mut body = String::new();
            std::io::Read::read_to_string(&mut store.body(id, e.chunks), &mut body).expect("body");
            assert_eq!(body, format!("body {}", e.from), "id {id}");
        }
    }

    #[test]
    fn one_fsync_answers_every_waiting_request() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let (requests, waiting) = async_channel::unbounded();
        let replies: Vec<_> = (0..10)
            .map(|_| {
                let (reply, rx) = async_channel::bounded(1);
                requests
                    .send_blocking(Request {
                        writes: None,
                        reply,
                    })
                    .expect("queued");
                rx
            })
            .collect();
        drop(requests);
        // Ten requests were waiting when the committer looked: one fsync for all of them.
        assert_eq!(run(&store, &waiting), 1);
        for rx in replies {
            assert!(rx.recv_blocking().expect("answered").is_ok());
        }
    }

    /// An envelope whose reverse path names its writer and message, to check bodies against.
    fn envelope(w: usize, m: usize) -> Envelope {
        Envelope::plain(&format!("<w{w}.m{m}@example.test>"), 0, 1, vec![])
    }
}
