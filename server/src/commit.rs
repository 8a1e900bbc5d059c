//! Group commit: one fsync acknowledges every write made by every session since the last one.
//!
//! A [`Committer`] owns a dedicated thread (fjall is blocking; the executor never waits on a
//! disk). A session writes its message (chunks, then envelope) without syncing, then calls
//! [`Committer::sync`]. The thread takes the first waiting request, then every other request
//! already queued, calls [`Store::sync`] once, and answers all of them with its result. Writes
//! that happened before a request was sent are in the journal before the fsync that answers it,
//! so each answer means "your writes are durable". While one fsync runs, new requests pile up
//! and share the next one: the fsync rate stays what the disk allows, and messages per fsync
//! grow with the number of concurrent sessions.
//!
//! If an fsync fails, fjall poisons the database; every later request fails too, and sessions
//! answer 451 instead of 250.

use std::sync::Arc;
use std::thread;

use async_channel::{Receiver, Sender};

use crate::store::Store;

/// The answer to one request: durable, or why not.
type Outcome = Result<(), Arc<str>>;

/// The handle sessions and workers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    requests: Sender<Sender<Outcome>>,
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

    /// Waits until every write this task made before the call is durable.
    pub async fn sync(&self) -> Result<(), String> {
        let (tx, rx) = async_channel::bounded(1);
        self.requests
            .send(tx)
            .await
            .map_err(|_| "the committer has stopped".to_string())?;
        match rx.recv().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the committer has stopped".to_string()),
        }
    }

    /// [`Committer::sync`] for a blocking thread.
    pub fn sync_blocking(&self) -> Result<(), String> {
        let (tx, rx) = async_channel::bounded(1);
        self.requests
            .send_blocking(tx)
            .map_err(|_| "the committer has stopped".to_string())?;
        match rx.recv_blocking() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the committer has stopped".to_string()),
        }
    }
}

/// The committer thread: batch, fsync once, answer all. Returns how many fsyncs it made, once
/// every handle is gone.
fn run(store: &Store, waiting: &Receiver<Sender<Outcome>>) -> u64 {
    let mut batch = Vec::new();
    let mut fsyncs = 0;
    while let Ok(first) = waiting.recv_blocking() {
        fsyncs += 1;
        batch.push(first);
        while let Ok(more) = waiting.try_recv() {
            batch.push(more);
        }
        let outcome: Outcome = store.sync().map_err(|e| Arc::from(e.to_string()));
        for reply in batch.drain(..) {
            // A requester that went away (its connection closed) needs no answer.
            let _ = reply.try_send(outcome.clone());
        }
    }
    fsyncs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueId;
    use crate::store::{Envelope, TraceRecord};

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
                            let s = store.clone();
                            let i = id.clone();
                            smol::unblock(move || {
                                s.put_chunk(&i, 0, format!("body {w} {m}").as_bytes())?;
                                s.put_envelope(&i, &envelope(w, m))
                            })
                            .await
                            .expect("write");
                            committer.sync().await.expect("durable");
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
                let (tx, rx) = async_channel::bounded(1);
                requests.send_blocking(tx).expect("queued");
                rx
            })
            .collect();
        drop(requests);
        // Ten requests were waiting when the committer looked: one fsync for all of them.
        assert_eq!(run(&store, &waiting), 1);
        for rx in replies {
            assert_eq!(rx.recv_blocking().expect("answered"), Ok(()));
        }
    }

    /// An envelope whose reverse path names its writer and message, to check bodies against.
    fn envelope(w: usize, m: usize) -> Envelope {
        Envelope {
            from: format!("{w} {m}"),
            smtputf8: false,
            body: None,
            ret: None,
            envid: None,
            received_at: 0,
            trace: TraceRecord::default(),
            size: 0,
            chunks: 1,
            recipients: vec![],
        }
    }
}
