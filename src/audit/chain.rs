//! The hash chain over the audit log. Link `n` holds `event_hash = SHA-256(AuditEvent as stored)`
//! and `chain_hash = SHA-256(chain_hash(n-1) | n | event id | event_hash)`, so changing, removing,
//! inserting or reordering any record breaks every later link. Appends hold the chain's lock
//! (a PostgreSQL advisory lock; SQLite's single writer), so instances sharing a database extend one
//! chain.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::error::{FhirError, FhirResult};
use crate::store::audit::{self as table, Link};
use crate::store::{DbConn, Store};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn event_hash(content: &str) -> String {
    hex(&Sha256::digest(content.as_bytes()))
}

fn chain_hash(prev: &str, seq: i64, event_id: &str, event_hash: &str) -> String {
    hex(&Sha256::digest(
        format!("{prev}|{seq}|{event_id}|{event_hash}").as_bytes(),
    ))
}

/// Locks the chain for the caller's transaction; its current head.
pub fn lock_head(conn: &mut DbConn) -> FhirResult<Option<Link>> {
    table::lock_head(conn)
}

/// Links the stored AuditEvents `(id, content)`, in order, after `head`.
pub fn append_all<'a>(
    conn: &mut DbConn,
    head: Option<Link>,
    events: impl Iterator<Item = (&'a str, &'a str)>,
) -> FhirResult<()> {
    let (mut seq, mut prev) = match head {
        Some(h) => (h.seq, h.chain_hash),
        None => (0, GENESIS.to_string()),
    };
    let mut links = Vec::new();
    for (event_id, content) in events {
        seq += 1;
        let eh = event_hash(content);
        let ch = chain_hash(&prev, seq, event_id, &eh);
        prev = ch.clone();
        links.push(Link {
            seq,
            event_id: event_id.to_string(),
            event_hash: eh,
            chain_hash: ch,
        });
    }
    table::insert_many(conn, &links)
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        records: i64,
        head: String,
    },
    /// The first problem, in chain order.
    Broken {
        seq: i64,
        problem: String,
    },
}

/// Checks the whole log: every link in order, every event against its hash, and no AuditEvent
/// outside the chain.
pub async fn verify(store: &Store) -> FhirResult<Verdict> {
    const PAGE: i64 = 5000;
    let (mut prev, mut expected) = (GENESIS.to_string(), 1i64);
    // The first page starts below any possible seq, so a link slipped in at 0 or below is seen.
    let mut after = i64::MIN;
    loop {
        let links = store
            .read(move |conn| table::links_after(conn, after, PAGE))
            .await?;
        let done = (links.len() as i64) < PAGE;
        for l in links {
            let broken = |problem: String| {
                Ok(Verdict::Broken {
                    seq: l.seq,
                    problem,
                })
            };
            if l.seq != expected {
                return Ok(Verdict::Broken {
                    seq: expected,
                    problem: format!(
                        "record {expected} is missing: the chain jumps from {} to {} (deleted)",
                        expected - 1,
                        l.seq
                    ),
                });
            }
            let Some(content) = &l.content else {
                return broken(format!("AuditEvent {} was deleted", l.event_id));
            };
            if event_hash(content) != l.event_hash {
                return broken(format!("AuditEvent {} was modified", l.event_id));
            }
            if chain_hash(&prev, l.seq, &l.event_id, &l.event_hash) != l.chain_hash {
                return broken(format!(
                    "the chain breaks at AuditEvent {}: records were modified, inserted or reordered",
                    l.event_id
                ));
            }
            prev = l.chain_hash;
            expected += 1;
            after = l.seq;
        }
        if done {
            break;
        }
    }
    if let Some(id) = store.read(table::unchained_event).await? {
        return Ok(Verdict::Broken {
            seq: expected,
            problem: format!(
                "AuditEvent {id} is not in the chain (inserted or changed afterwards)"
            ),
        });
    }
    Ok(Verdict::Intact {
        records: expected - 1,
        head: prev,
    })
}

/// Writes the AuditEvents stored since `since` (µs) as NDJSON, in chain order; how many.
pub async fn export(store: &Store, since: i64, out: &mut impl Write) -> FhirResult<u64> {
    const PAGE: i64 = 2000;
    let (mut after, mut n) = (0i64, 0u64);
    loop {
        let rows = store
            .read(move |conn| table::events_since(conn, since, after, PAGE))
            .await?;
        for r in &rows {
            writeln!(out, "{}", r.content).map_err(|e| FhirError::Internal(e.to_string()))?;
            n += 1;
        }
        match rows.last() {
            Some(r) if rows.len() as i64 == PAGE => after = r.seq,
            _ => return Ok(n),
        }
    }
}
