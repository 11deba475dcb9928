//! The audit trail: one IHE BALP-shaped AuditEvent per interaction, appended to the log
//! (`audit_block`: one row per commit, holding its events compressed and the hash chain through
//! them).
//!
//! Writes append their AuditEvents in their own transaction (`record_in`); reads, searches and
//! failures hand theirs to the `Auditor`, which commits them in batches (group commit), a batch
//! being one block, and answers each request only once its record is durable. If that fails, the
//! request fails (503): closed.
//!
//! Reads and searches of AuditEvents use ordinary (server-written, append-only) AuditEvent
//! resource rows with their search indexes. Those are written from the log afterwards, in chain
//! order (`materialize`): by the committer when no request waits on it, and by any read that
//! could see AuditEvents before it runs (`catch_up`), so a search always sees every record
//! already logged. Recording a request thus costs a share of one row, and indexing is off the hot
//! path.

pub mod block;
mod chain;
mod event;

use std::sync::mpsc;
use std::thread;

use serde_json::Value;

use crate::error::{FhirError, FhirResult};
use crate::rest::Prepared;
use crate::store::audit::{Head, PendingChunk};
use crate::store::{DbConn, Pooled, Store};

pub use chain::{export, verify, Verdict};
pub use event::{
    infer, patient_entity, query_entity, resource_entity, AuditSeed, Entity, Interaction,
};

/// The entities of a search: its query (relative to the base, e.g. `Patient?family=x`) and the
/// patients it names (`patient=`, `subject=Patient/…`, a Patient `_id`, a compartment).
pub fn search_entities(query: &str, params: &[(String, String)], ty: Option<&str>) -> Vec<Entity> {
    let mut patients: Vec<String> = Vec::new();
    let mut add = |p: &str| {
        if crate::fhir::valid_id(p) && !patients.iter().any(|x| x == p) {
            patients.push(p.to_string());
        }
    };
    if let Some(("Patient", rest)) = query.split_once('/') {
        add(rest.split('/').next().unwrap_or_default());
    }
    for (k, v) in params {
        // `patient:identifier=…` names an identifier, not a patient id.
        if k.contains(':') {
            continue;
        }
        let name = k.as_str();
        for value in v.split(',') {
            let id = match (name, ty) {
                ("patient", _) => value.rsplit("Patient/").next(),
                ("subject", _) => value.split_once("Patient/").map(|(_, id)| id),
                ("_id", Some("Patient")) => Some(value),
                _ => None,
            };
            if let Some(id) = id {
                add(id.split('/').next().unwrap_or_default());
            }
        }
    }
    let mut out = vec![query_entity(query)];
    out.extend(patients.iter().map(|p| patient_entity(p)));
    out
}

/// The entities of a written (or read) version: the resource with its version, and the patients
/// whose compartment holds it.
pub fn written_entities(s: &crate::rest::Stored, base_url: &str) -> Vec<Entity> {
    let mut out = vec![resource_entity(&format!(
        "{}/{}/_history/{}",
        s.resource_type, s.id, s.version
    ))];
    if let Some(patients) = &s.patients {
        out.extend(patients.iter().map(|p| patient_entity(p)));
    } else if let Some(content) = &s.content {
        if let Ok(v) = serde_json::from_str::<Value>(content) {
            out.extend(
                crate::search::patients_in(&v, base_url)
                    .iter()
                    .map(|p| patient_entity(p)),
            );
        }
    }
    out
}

/// Events handed to the committer at most per batch.
const MAX_BATCH: usize = 512;

/// An AuditEvent ready for the log: its id, when it was recorded (µs), its content as stored
/// (with `id` and `meta` stamped) and that content's hash (`AuditSeed::event` makes them).
#[derive(Debug, Clone)]
pub struct Logged {
    pub id: String,
    pub recorded: i64,
    pub content: String,
    /// SHA-256 of `content` (hex): worked out on the request's thread, not the committer's.
    pub hash: String,
}

impl Logged {
    fn new(id: String, recorded: i64, content: String) -> Logged {
        let hash = chain::event_hash(&content);
        Logged {
            id,
            recorded,
            content,
            hash,
        }
    }
}

/// Links materialized per transaction when a read waits for them.
const MATERIALIZE_CHUNK: i64 = 1000;
/// Links materialized per transaction when the committer is idle: small, so that a request
/// arriving meanwhile waits only briefly for the write lock.
const IDLE_CHUNK: i64 = 100;
/// How long the committer waits without a record before it materializes.
const IDLE: std::time::Duration = std::time::Duration::from_millis(100);

type Reply = tokio::sync::oneshot::Sender<FhirResult<()>>;
type Queued = (Logged, Reply);

/// The group committer: a thread that writes queued AuditEvents a batch per transaction.
#[derive(Clone)]
pub struct Auditor {
    queue: mpsc::Sender<Queued>,
    /// The request deadline: a record not durable by then fails its request (503).
    deadline: Option<std::time::Duration>,
}

impl Auditor {
    pub fn start(store: Store, base_url: String) -> Auditor {
        let (queue, rx) = mpsc::channel::<Queued>();
        let deadline = store.deadline();
        thread::Builder::new()
            .name("cairn-audit".into())
            .spawn(move || {
                // Whether links may wait for their resource rows (after a restart, they may).
                let mut behind = true;
                // The connection batches are appended on: one check-out (and its ping) less per
                // batch.
                let mut held = None;
                // The chain's head as of this thread's last append (PostgreSQL links a batch
                // in Rust from it; a stale one only costs the database the linking).
                let mut head = None;
                // Ends when every sender (the server's state) is gone.
                loop {
                    let first = match rx.recv_timeout(IDLE) {
                        Ok(item) => item,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // Quiet: the connection goes back to the pool,
                            held = None;
                            // and resource rows are written, a chunk at a time, until a record
                            // arrives or none wait. Writes append their records themselves, so
                            // the log is looked at even when nothing came through the queue.
                            let mut next = None;
                            loop {
                                let Some(work) = crate::store::background_work() else {
                                    break;
                                };
                                if !behind {
                                    behind = store
                                        .read_now(crate::store::audit::behind)
                                        .unwrap_or(false);
                                }
                                if !behind {
                                    break;
                                }
                                behind = materialize_chunk(&store, &base_url);
                                drop(work);
                                if let Ok(item) = rx.try_recv() {
                                    next = Some(item);
                                    break;
                                }
                            }
                            match next {
                                Some(item) => item,
                                None => continue,
                            }
                        }
                    };
                    behind = true;
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    let (events, replies): (Vec<Logged>, Vec<Reply>) = batch.into_iter().unzip();
                    let (n, started) = (events.len(), std::time::Instant::now());
                    crate::metrics::AUDIT_BATCH.observe(n as f64);
                    let stored = commit(&store, &mut held, &mut head, events);
                    tracing::debug!(
                        events = n,
                        us = started.elapsed().as_micros() as u64,
                        "audit batch"
                    );
                    for (reply, ok) in replies.into_iter().zip(stored) {
                        let _ = reply.send(if ok {
                            Ok(())
                        } else {
                            Err(FhirError::Unavailable(
                                "the audit log is unavailable, so the request was not answered"
                                    .into(),
                            ))
                        });
                    }
                }
            })
            .expect("start the audit thread");
        Auditor { queue, deadline }
    }

    /// Stores one AuditEvent durably (with others queued at the same time); returns once it is.
    /// The event was serialized and hashed on the request's own thread; the committer only links
    /// and inserts.
    pub async fn record(&self, event: Logged) -> FhirResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .send((event, tx))
            .map_err(|_| FhirError::Unavailable("the audit log is shut down".into()))?;
        let stored = match self.deadline {
            None => rx.await,
            // Still queued, it may be stored later: the trail then holds a record of a request
            // answered 503, never the other way round.
            Some(d) => tokio::time::timeout(d, rx).await.map_err(|_| {
                FhirError::Unavailable(
                    "the audit log did not record the request in time, so it was not answered"
                        .into(),
                )
            })?,
        };
        stored.map_err(|_| FhirError::Unavailable("the audit log stopped".into()))?
    }
}

/// Stores a batch in one transaction, as one block; if that fails, each event alone, so that one
/// bad event fails only its own request. A panic is an error, never the end of the committer.
fn commit(
    store: &Store,
    held: &mut Option<Pooled>,
    head: &mut Option<Head>,
    events: Vec<Logged>,
) -> Vec<bool> {
    let mut attempt = |events: &[Logged]| -> FhirResult<()> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Packed before the transaction: the chain's lock is held only to link and insert.
            let sealed = chain::Sealed::new(events);
            store.append_now(held, |conn| chain::append(conn, &sealed, head))
        }))
        .unwrap_or_else(|_| {
            *held = None;
            Err(FhirError::Internal("the audit committer panicked".into()))
        })
    };
    let n = events.len();
    match attempt(&events) {
        Ok(()) => vec![true; n],
        Err(e) => {
            tracing::error!(error = %e, events = n, "an audit batch could not be stored");
            if n == 1 {
                return vec![false];
            }
            events
                .into_iter()
                .map(|ev| {
                    let r = attempt(std::slice::from_ref(&ev));
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "an AuditEvent could not be stored");
                    }
                    r.is_ok()
                })
                .collect()
        }
    }
}

/// Appends AuditEvents to the log inside the caller's transaction, as one block.
pub fn record_in(conn: &mut DbConn, events: Vec<Logged>) -> FhirResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    chain::append(conn, &chain::Sealed::new(&events), &mut None)
}

/// Writes the resource rows (current, history, search indexes) of the next logged AuditEvents
/// that have none, in chain order, in the caller's transaction; whether more may wait.
pub fn materialize(conn: &mut DbConn, base_url: &str, chunk: i64) -> FhirResult<bool> {
    let PendingChunk { rows, last, full } = crate::store::audit::lock_pending(conn, chunk)?;
    let Some(last) = last else {
        return Ok(false);
    };
    // An event that is not what was hashed when it was logged (the block was altered) gets no
    // resource row: searches never show it, and `audit verify` reports the block.
    let prepared = rows
        .into_iter()
        .filter(|r| {
            let intact = chain::event_hash(&r.content) == r.hash;
            if !intact {
                tracing::error!(event = %r.event_id, "a logged AuditEvent does not match its hash");
            }
            intact
        })
        .map(|r| Prepared::logged(base_url, "AuditEvent", r.event_id, r.recorded, r.content))
        .collect::<FhirResult<Vec<_>>>()?;
    crate::rest::write_new_versions(conn, prepared)?;
    crate::store::audit::mark_materialized(conn, last)?;
    Ok(full)
}

/// One chunk of `materialize` in its own transaction (the committer's idle work); whether more
/// may wait. A failure is logged and retried at the next quiet moment.
fn materialize_chunk(store: &Store, base_url: &str) -> bool {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.write_now(|conn| materialize(conn, base_url, IDLE_CHUNK))
    }))
    .unwrap_or_else(|_| {
        Err(FhirError::Internal(
            "the audit materializer panicked".into(),
        ))
    });
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, "AuditEvent resource rows could not be written");
        false
    })
}

/// `catch_up` inside the caller's transaction (a Bundle's GET entries).
pub fn catch_up_in(conn: &mut DbConn, base_url: &str) -> FhirResult<()> {
    while materialize(conn, base_url, MATERIALIZE_CHUNK)? {}
    Ok(())
}

/// Makes every AuditEvent logged so far readable and searchable: called before any read that
/// could see AuditEvents. Cheap when nothing waits; each chunk commits on its own, so a long
/// backlog cut short by the request deadline keeps what was done.
pub async fn catch_up(store: &Store, base_url: &str) -> FhirResult<()> {
    if !store.read(crate::store::audit::behind).await? {
        return Ok(());
    }
    loop {
        let base = base_url.to_string();
        if !store
            .write(move |conn| materialize(conn, &base, MATERIALIZE_CHUNK))
            .await?
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_event_is_stamped_and_hashed() {
        let seed = AuditSeed::new(Interaction::Read, None, Some("10.0.0.1"), "http://x/fhir");
        let logged = seed.event(200, vec![resource_entity("Patient/p/_history/1")]);
        let ev: Value = serde_json::from_str(&logged.content).unwrap();
        assert_eq!(ev["id"], logged.id.as_str());
        assert_eq!(
            ev["meta"]["lastUpdated"],
            crate::fhir::format_instant(logged.recorded).as_str()
        );
        assert_eq!(logged.hash, chain::event_hash(&logged.content));
        assert!(logged
            .content
            .starts_with(r#"{"resourceType":"AuditEvent","id":"#));
    }
}
