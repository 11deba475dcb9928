//! The hash chain over the audit log. Link `n` holds its AuditEvent as stored,
//! `event_hash = SHA-256(that AuditEvent)`
//! and `chain_hash = SHA-256(chain_hash(n-1) | n | event id | event_hash)`, so changing, removing,
//! inserting or reordering any record breaks every later link. Appends hold the chain's lock
//! (a PostgreSQL advisory lock; SQLite's single writer), so instances sharing a database extend one
//! chain.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::error::{FhirError, FhirResult};
use crate::store::audit::{self as table, Head, Link};
use crate::store::{DbConn, Store};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(super) fn event_hash(content: &str) -> String {
    format!("{:x}", Sha256::digest(content.as_bytes()))
}

fn chain_hash(prev: &str, seq: i64, event_id: &str, event_hash: &str) -> String {
    format!(
        "{:x}",
        Sha256::digest(format!("{prev}|{seq}|{event_id}|{event_hash}").as_bytes())
    )
}

/// Locks the chain for the caller's transaction; its current head.
pub fn lock_head(conn: &mut DbConn) -> FhirResult<Option<Head>> {
    table::lock_head(conn)
}

/// Appends AuditEvents (`Logged`: id, when recorded, content as stored), in order, after `head`.
pub fn append_all(
    conn: &mut DbConn,
    head: Option<Head>,
    events: impl Iterator<Item = super::Logged>,
) -> FhirResult<()> {
    let (mut seq, mut prev) = match head {
        Some(h) => (h.seq, h.chain_hash),
        None => (0, GENESIS.to_string()),
    };
    let mut links = Vec::new();
    for ev in events {
        seq += 1;
        let ch = chain_hash(&prev, seq, &ev.id, &ev.hash);
        prev = ch.clone();
        links.push(Link {
            seq,
            event_id: ev.id,
            event_hash: ev.hash,
            chain_hash: ch,
            recorded: ev.recorded,
            content: ev.content,
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

/// Checks the whole log: every link in order, every event (in its link and in its resource row)
/// against its hash, and no AuditEvent outside the chain.
pub async fn verify(store: &Store) -> FhirResult<Verdict> {
    const PAGE: i64 = 5000;
    // Links up to here must have their resource rows; later ones may not have them yet.
    let materialized = store.read(table::materialized).await?;
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
            // The event in the link (older links have none) and its resource row (written up
            // to the materialized mark) must both be the event that was hashed.
            if l.logged.is_none() && l.content.is_none()
                || l.content.is_none() && l.seq <= materialized
            {
                return broken(format!("AuditEvent {} was deleted", l.event_id));
            }
            for copy in [&l.logged, &l.content].into_iter().flatten() {
                if event_hash(copy) != l.event_hash {
                    return broken(format!("AuditEvent {} was modified", l.event_id));
                }
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
