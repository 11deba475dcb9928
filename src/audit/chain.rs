//! The hash chain over the audit log. Event `n` in chain order has
//! `event_hash = SHA-256(the AuditEvent as stored)` and
//! `chain_hash(n) = SHA-256(chain_hash(n-1) | n | event id | event_hash)`, so changing, removing,
//! inserting or reordering any record breaks every later link. The log keeps events in blocks
//! (one per commit): a block holds its events, each one's hash, and the chain hash after its last
//! event. Appends hold the chain's lock (a PostgreSQL advisory lock; SQLite's single writer), so
//! instances sharing a database extend one chain.

use std::collections::HashSet;
use std::io::Write;

use sha2::{Digest, Sha256};

use super::block;
use crate::error::{FhirError, FhirResult};
use crate::store::audit::{self as table, Block, Head};
use crate::store::{DbConn, Store};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(super) fn event_hash(content: &str) -> String {
    sha256_hex(content)
}

fn chain_hash(prev: &str, seq: i64, event_id: &str, event_hash: &str) -> String {
    sha256_hex(&format!("{prev}|{seq}|{event_id}|{event_hash}"))
}

/// SHA-256 in lowercase hex (`hex::encode_to_slice`: a table lookup per byte, where
/// `format!("{:x}")` and `hex::encode` go through a formatter or an iterator per digit).
fn sha256_hex(text: &str) -> String {
    let mut out = [0u8; 64];
    // 32 bytes fill the 64 digits exactly, and hex digits are ASCII: neither step can fail.
    let _ = hex::encode_to_slice(Sha256::digest(text.as_bytes()), &mut out);
    std::str::from_utf8(&out).unwrap_or_default().to_string()
}

/// AuditEvents packed for the log, not yet linked: all the work of an append that needs no lock.
pub struct Sealed {
    ids: Vec<String>,
    hashes: Vec<String>,
    recorded: i64,
    body: Vec<u8>,
}

impl Sealed {
    pub fn new(events: &[super::Logged]) -> Sealed {
        Sealed {
            ids: events.iter().map(|e| e.id.clone()).collect(),
            hashes: events.iter().map(|e| e.hash.clone()).collect(),
            recorded: events.iter().map(|e| e.recorded).max().unwrap_or(0),
            body: block::pack(events.iter().map(|e| e.content.as_str())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The head of the chain once these events are linked onto `after`.
    fn link(&self, after: &Head) -> Head {
        let (mut seq, mut prev) = (after.seq, after.chain_hash.clone());
        for (id, hash) in self.ids.iter().zip(&self.hashes) {
            seq += 1;
            prev = chain_hash(&prev, seq, id, hash);
        }
        Head {
            seq,
            chain_hash: prev,
        }
    }
}

/// Appends the sealed events to the chain, as one block. On SQLite the caller's write transaction
/// holds the chain, and the links are worked out from the head read in it. On PostgreSQL one
/// statement locks the chain for the transaction it runs in and inserts: called outside a
/// transaction, it is a commit of its own. There `known` is the head the caller last saw: the
/// links are worked out from it here, and the statement uses them only if the head is still that
/// one (else it links the events itself). `known` then holds the new head, or None after an error.
pub fn append(conn: &mut DbConn, sealed: &Sealed, known: &mut Option<Head>) -> FhirResult<()> {
    if sealed.is_empty() {
        return Ok(());
    }
    if let DbConn::Postgres(pg) = conn {
        let linked = known.take().map(|after| {
            let new = sealed.link(&after);
            (after, new.chain_hash)
        });
        *known = Some(table::append_pg(
            pg,
            &sealed.ids,
            &sealed.hashes,
            sealed.recorded,
            &sealed.body,
            linked.as_ref().map(|(after, hash)| (after, hash.as_str())),
        )?);
        return Ok(());
    }
    let head = table::head(conn)?.unwrap_or_else(|| Head {
        seq: 0,
        chain_hash: GENESIS.to_string(),
    });
    let new = sealed.link(&head);
    table::insert(
        conn,
        &Block {
            seq: new.seq,
            events: sealed.ids.len() as i32,
            hashes: sealed.hashes.concat(),
            chain_hash: new.chain_hash,
            recorded: sealed.recorded,
            body: sealed.body.clone(),
        },
    )
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

/// Checks the whole log: every block in order, every event (in its block and, once written, in
/// its resource row) against its hash, every link of the chain, and no AuditEvent outside it.
pub async fn verify(store: &Store) -> FhirResult<Verdict> {
    /// Blocks per page, and events per page at most (the rows are looked up per page).
    const PAGE: i64 = 1000;
    const PAGE_EVENTS: usize = 5000;
    // Events up to the mark must have their resource rows; later ones may not have them yet.
    // `rows` is how many AuditEvent versions existed then.
    let (materialized, rows) = store.read(table::census).await?;
    let (mut prev, mut expected, mut found) = (GENESIS.to_string(), 1i64, 0i64);
    // The first page starts below any possible seq, so a block slipped in at 0 or below is seen.
    let mut after = i64::MIN;
    loop {
        let blocks = store
            .read(move |conn| table::blocks_after(conn, after, PAGE))
            .await?;
        let done = (blocks.len() as i64) < PAGE;
        // Unpack a page's blocks (up to PAGE_EVENTS events), then look up their resource rows.
        // Each event with its id (None if it is not an AuditEvent).
        type Unpacked = Result<Vec<(String, Option<String>)>, String>;
        let mut page: Vec<(Block, Unpacked)> = Vec::new();
        let mut events = 0;
        let mut rest = blocks.into_iter();
        for b in rest.by_ref() {
            let unpacked = block::unpack(&b.body).map(|events| {
                events
                    .into_iter()
                    .map(|e| {
                        let id = block::id_and_time(&e).map(|(id, _)| id);
                        (e, id)
                    })
                    .collect::<Vec<_>>()
            });
            events += unpacked.as_ref().map_or(0, Vec::len);
            page.push((b, unpacked));
            if events >= PAGE_EVENTS {
                break;
            }
        }
        let more = rest.next().is_some();
        let ids: Vec<String> = page
            .iter()
            .filter(|(b, _)| b.first() <= materialized)
            .flat_map(|(_, u)| u.iter().flatten())
            .filter_map(|(_, id)| id.clone())
            .collect();
        let stored: std::collections::HashMap<String, String> = store
            .read(move |conn| table::event_rows(conn, &ids))
            .await?
            .into_iter()
            .map(|r| (r.res_id, r.content))
            .collect();
        for (b, unpacked) in page {
            let first = b.first();
            if b.events < 1 || first != expected {
                let problem = if first > expected {
                    format!(
                        "record {expected} is missing: the chain jumps from {} to {first} (deleted)",
                        expected - 1
                    )
                } else {
                    format!(
                        "a block holding records {first} to {} overlaps the records before it (inserted)",
                        b.seq
                    )
                };
                return Ok(Verdict::Broken {
                    seq: expected,
                    problem,
                });
            }
            let events = match unpacked {
                // (ASCII: the hashes are sliced by byte offsets.)
                Ok(e)
                    if e.len() == b.events as usize
                        && b.hashes.len() == 64 * e.len()
                        && b.hashes.is_ascii() =>
                {
                    e
                }
                Ok(e) if e.iter().all(|(event, _)| event.is_empty()) => {
                    return Ok(Verdict::Broken {
                        seq: first,
                        problem: "the AuditEvent was deleted from the log".into(),
                    })
                }
                _ => {
                    return Ok(Verdict::Broken {
                        seq: first,
                        problem: format!(
                            "the block holding records {first} to {} was modified",
                            b.seq
                        ),
                    })
                }
            };
            for (i, (event, id)) in events.into_iter().enumerate() {
                let seq = first + i as i64;
                let hash = b.hash(i).unwrap_or_default();
                let name = id.as_deref().unwrap_or("?");
                let broken = |problem: String| Ok(Verdict::Broken { seq, problem });
                if event_hash(&event) != hash {
                    return broken(format!("AuditEvent {name} was modified"));
                }
                let Some(id) = id else {
                    return broken("the record is not an AuditEvent".into());
                };
                if seq <= materialized {
                    match stored.get(&id) {
                        None => return broken(format!("AuditEvent {id} was deleted")),
                        Some(row) if event_hash(row) != hash => {
                            return broken(format!("AuditEvent {id} was modified"))
                        }
                        Some(_) => found += 1,
                    }
                }
                prev = chain_hash(&prev, seq, &id, hash);
            }
            if prev != b.chain_hash {
                return Ok(Verdict::Broken {
                    seq: first,
                    problem: format!(
                        "the chain breaks at the block holding records {first} to {}: records \
                         were modified, inserted or reordered",
                        b.seq
                    ),
                });
            }
            expected = b.seq + 1;
            after = b.seq;
        }
        if done && !more {
            break;
        }
    }
    // Every AuditEvent version there was at the census is one of those found, or it is not in
    // the chain.
    if rows > found {
        let id = match store.read(table::revised_event).await? {
            Some(id) => id,
            None => unchained(store).await?.unwrap_or_else(|| "?".into()),
        };
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

/// The first AuditEvent resource row whose event is not in the log. The rows are read first:
/// any row written since was written from a block already there when the log is read.
async fn unchained(store: &Store) -> FhirResult<Option<String>> {
    const PAGE: i64 = 5000;
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read(move |conn| table::event_ids_after(conn, after, PAGE))
            .await?;
        let done = (page.len() as i64) < PAGE;
        after = page.last().map_or(after, |(seq, _)| *seq);
        ids.extend(page.into_iter().map(|(_, id)| id));
        if done {
            break;
        }
    }
    let mut chained = HashSet::new();
    let mut after = i64::MIN;
    loop {
        let blocks = store
            .read(move |conn| table::blocks_after(conn, after, 1000))
            .await?;
        let done = blocks.len() < 1000;
        for b in &blocks {
            for e in block::unpack(&b.body).unwrap_or_default() {
                if let Some((id, _)) = block::id_and_time(&e) {
                    chained.insert(id);
                }
            }
            after = b.seq;
        }
        if done {
            break;
        }
    }
    Ok(ids.into_iter().find(|id| !chained.contains(id)))
}

/// Writes the AuditEvents recorded since `since` (µs) as NDJSON, in chain order; how many.
pub async fn export(store: &Store, since: i64, out: &mut impl Write) -> FhirResult<u64> {
    const PAGE: i64 = 200;
    let (mut after, mut n) = (i64::MIN, 0u64);
    loop {
        let blocks = store
            .read(move |conn| table::blocks_since(conn, since, after, PAGE))
            .await?;
        for b in &blocks {
            let events = block::unpack(&b.body).map_err(|e| {
                FhirError::Internal(format!(
                    "the audit block holding records {} to {} cannot be read: {e}",
                    b.first(),
                    b.seq
                ))
            })?;
            for e in events {
                if block::id_and_time(&e).is_some_and(|(_, at)| at >= since) {
                    writeln!(out, "{e}").map_err(|e| FhirError::Internal(e.to_string()))?;
                    n += 1;
                }
            }
        }
        match blocks.last() {
            Some(b) if blocks.len() as i64 == PAGE => after = b.seq,
            _ => return Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowercase hex of SHA-256, as PostgreSQL's `encode(sha256(…), 'hex')` writes it when it
    /// links a block itself: both must agree on every link.
    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(
            event_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            chain_hash(GENESIS, 1, "e", "h"),
            event_hash(&format!("{GENESIS}|1|e|h"))
        );
    }
}
