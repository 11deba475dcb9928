//! The audit trail: one IHE BALP-shaped AuditEvent per interaction, stored as an ordinary (but
//! server-written, append-only) AuditEvent resource so the search engine serves it, and chained:
//! every record's hash covers the previous record's, in `audit_chain`.
//!
//! Writes put their AuditEvent in their own transaction (`record_in`); reads, searches and failures
//! hand theirs to the `Auditor`, which commits them in batches (group commit) and answers each
//! request only once its record is durable. If that fails, the request fails (503): closed.

mod chain;
mod event;

use std::sync::mpsc;
use std::thread;

use serde_json::Value;

use crate::error::{FhirError, FhirResult};
use crate::rest::Prepared;
use crate::store::{DbConn, Store};

pub use chain::{export, verify, Verdict};
pub use event::{infer, patient_entity, query_entity, resource_entity, AuditSeed, Interaction};

/// The entities of a search: its query (relative to the base, e.g. `Patient?family=x`) and the
/// patients it names (`patient=`, `subject=Patient/…`, a Patient `_id`, a compartment).
pub fn search_entities(query: &str, params: &[(String, String)], ty: Option<&str>) -> Vec<Value> {
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
pub fn written_entities(s: &crate::rest::Stored, base_url: &str) -> Vec<Value> {
    let mut out = vec![resource_entity(&format!(
        "{}/{}/_history/{}",
        s.resource_type, s.id, s.version
    ))];
    if let Some(content) = &s.content {
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

type Reply = tokio::sync::oneshot::Sender<FhirResult<()>>;
type Queued = (Prepared, Reply);

/// The group committer: a thread that writes queued AuditEvents a batch per transaction.
#[derive(Clone)]
pub struct Auditor {
    queue: mpsc::Sender<Queued>,
    base_url: String,
    /// The request deadline: a record not durable by then fails its request (503).
    deadline: Option<std::time::Duration>,
}

impl Auditor {
    pub fn start(store: Store, base_url: String) -> Auditor {
        let (queue, rx) = mpsc::channel::<Queued>();
        let base = base_url.clone();
        let deadline = store.deadline();
        thread::Builder::new()
            .name("cairn-audit".into())
            .spawn(move || {
                // Ends when every sender (the server's state) is gone.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    let (events, replies): (Vec<Prepared>, Vec<Reply>) = batch.into_iter().unzip();
                    let (n, started) = (events.len(), std::time::Instant::now());
                    crate::metrics::AUDIT_BATCH.observe(n as f64);
                    let stored = commit(&store, events);
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
        Auditor {
            queue,
            base_url: base,
            deadline,
        }
    }

    /// Stores one AuditEvent durably (with others queued at the same time); returns once it is.
    pub async fn record(&self, event: Value) -> FhirResult<()> {
        // Stamping and indexing happen here, on the request's own thread, in parallel; the
        // committer only inserts.
        let prepared = Prepared::new(
            &self.base_url,
            "AuditEvent",
            &uuid::Uuid::now_v7().to_string(),
            event,
        )?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .send((prepared, tx))
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

/// Stores a batch in one transaction; if that fails, each event alone, so that one bad event
/// fails only its own request. A panic is an error, never the end of the committer.
fn commit(store: &Store, events: Vec<Prepared>) -> Vec<bool> {
    let attempt = |events: Vec<Prepared>| -> FhirResult<()> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write_now(move |conn| store_prepared(conn, events))
        }))
        .unwrap_or_else(|_| Err(FhirError::Internal("the audit committer panicked".into())))
    };
    let n = events.len();
    match attempt(events.clone()) {
        Ok(()) => vec![true; n],
        Err(e) => {
            tracing::error!(error = %e, events = n, "an audit batch could not be stored");
            if n == 1 {
                return vec![false];
            }
            events
                .into_iter()
                .map(|ev| {
                    let r = attempt(vec![ev]);
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "an AuditEvent could not be stored");
                    }
                    r.is_ok()
                })
                .collect()
        }
    }
}

/// Appends AuditEvents inside the caller's transaction: each is stored as an AuditEvent resource
/// and linked into the hash chain.
pub fn record_in(conn: &mut DbConn, base_url: &str, events: Vec<Value>) -> FhirResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let prepared = events
        .into_iter()
        .map(|e| Prepared::new(base_url, "AuditEvent", &uuid::Uuid::now_v7().to_string(), e))
        .collect::<FhirResult<Vec<_>>>()?;
    store_prepared(conn, prepared)
}

/// Stores prepared AuditEvents and links them into the chain, in the caller's transaction.
fn store_prepared(conn: &mut DbConn, prepared: Vec<Prepared>) -> FhirResult<()> {
    let stored = crate::rest::write_new_versions(conn, prepared)?;
    // The chain is locked last, so it is held only for the inserts of the links.
    let head = chain::lock_head(conn)?;
    chain::append_all(
        conn,
        head,
        stored
            .iter()
            .map(|s| (s.id.as_str(), s.content.as_deref().unwrap_or_default())),
    )
}
