//! The audit log's table: blocks of AuditEvents in chain order (`audit_block`), each holding its
//! events as stored, their hashes and the chain hash after the last one; and the queries `audit
//! verify`, `audit export` and the materializer read it with. The AuditEvent resource rows that
//! reads and searches use are written from the blocks later (`audit_materialized` says how far,
//! as a chain position).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::{audit_block, audit_materialized};
use super::sql::Sql;
use super::DbConn;
use crate::error::FhirResult;

/// The PostgreSQL advisory lock that serializes materializers across instances.
const MATERIALIZE_LOCK: i64 = 0x0000_ca1a_0d18;

/// The head of the chain: what the next block builds on.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_block)]
pub struct Head {
    pub seq: i64,
    pub chain_hash: String,
}

/// One block of the log, as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_block)]
pub struct Block {
    /// The chain position of its last event.
    pub seq: i64,
    /// How many events it holds.
    pub events: i32,
    /// Their SHA-256 (hex), concatenated in order.
    pub hashes: String,
    /// The chain hash after its last event.
    pub chain_hash: String,
    /// The latest time one of them was recorded (µs).
    pub recorded: i64,
    /// The events (`audit::block`).
    pub body: Vec<u8>,
}

impl Block {
    /// The chain position of its first event.
    pub fn first(&self) -> i64 {
        self.seq - i64::from(self.events) + 1
    }

    /// The hash of its `i`-th event, as recorded (None if the hashes are garbled).
    pub fn hash(&self, i: usize) -> Option<&str> {
        self.hashes.get(64 * i..64 * (i + 1))
    }
}

/// The chain's last link. The caller holds the chain: on SQLite, a write transaction holds the
/// database; PostgreSQL appends through `append_pg`, which locks.
pub fn head(conn: &mut DbConn) -> FhirResult<Option<Head>> {
    super::first_row(
        audit_block::table
            .select(Head::as_select())
            .order(audit_block::seq.desc()),
        conn,
    )
}

diesel::define_sql_function! {
    /// Migration `2026-12-02-000007_audit_append_linked`: appends a block under the chain's lock,
    /// with the caller's links if the head is still `after`/`after_hash`, else linking the events
    /// itself; the new head.
    fn cairn_audit_append_linked(
        ids: diesel::sql_types::Array<Text>,
        hashes: diesel::sql_types::Array<Text>,
        recorded: BigInt,
        body: diesel::sql_types::Binary,
        after: diesel::sql_types::Nullable<BigInt>,
        after_hash: diesel::sql_types::Nullable<Text>,
        linked: diesel::sql_types::Nullable<Text>,
    ) -> diesel::sql_types::Record<(BigInt, Text)>;
}

/// PostgreSQL: appends a block in one statement (`cairn_audit_append_linked`), which takes the
/// chain's advisory lock for the transaction and reads the head after it. `linked` is the head the
/// caller linked the events onto, with the chain hash after them: used if that is still the head;
/// otherwise the function links them the way `audit::chain` does. On its own (autocommit) it is a
/// whole group commit in one round trip, and a prepared statement. Returns the new head.
pub fn append_pg(
    pg: &mut diesel::PgConnection,
    ids: &[String],
    hashes: &[String],
    recorded: i64,
    body: &[u8],
    linked: Option<(&Head, &str)>,
) -> FhirResult<Head> {
    let (seq, chain_hash) = diesel::select(cairn_audit_append_linked(
        ids,
        hashes,
        recorded,
        body,
        linked.map(|(after, _)| after.seq),
        linked.map(|(after, _)| after.chain_hash.as_str()),
        linked.map(|(_, hash)| hash),
    ))
    .get_result::<(i64, String)>(pg)?;
    Ok(Head { seq, chain_hash })
}

/// Appends a block: one row, whatever the number of events.
pub fn insert(conn: &mut DbConn, block: &Block) -> FhirResult<()> {
    diesel::insert_into(audit_block::table)
        .values(block)
        .execute(conn)?;
    Ok(())
}

/// Up to `limit` blocks after chain position `seq`, in order.
pub fn blocks_after(conn: &mut DbConn, seq: i64, limit: i64) -> FhirResult<Vec<Block>> {
    Ok(audit_block::table
        .select(Block::as_select())
        .filter(audit_block::seq.gt(seq))
        .order(audit_block::seq)
        .limit(limit)
        .load(conn)?)
}

/// The blocks that end after chain position `after` and at `until` at the latest, in order.
fn blocks_within(conn: &mut DbConn, after: i64, until: i64) -> FhirResult<Vec<Block>> {
    Ok(audit_block::table
        .select(Block::as_select())
        .filter(audit_block::seq.gt(after))
        .filter(audit_block::seq.le(until))
        .order(audit_block::seq)
        .load(conn)?)
}

/// Whether a block ends after chain position `seq`.
fn any_after(conn: &mut DbConn, seq: i64) -> FhirResult<bool> {
    Ok(audit_block::table
        .select(audit_block::seq)
        .filter(audit_block::seq.gt(seq))
        .first::<i64>(conn)
        .optional()?
        .is_some())
}

/// Up to `limit` blocks after chain position `seq` holding an event recorded at or after
/// `since` (µs), in order.
pub fn blocks_since(conn: &mut DbConn, since: i64, seq: i64, limit: i64) -> FhirResult<Vec<Block>> {
    Ok(audit_block::table
        .select(Block::as_select())
        .filter(audit_block::seq.gt(seq))
        .filter(audit_block::recorded.ge(since))
        .order(audit_block::seq)
        .limit(limit)
        .load(conn)?)
}

#[derive(Debug, QueryableByName)]
pub struct StoredEvent {
    #[diesel(sql_type = Text)]
    pub res_id: String,
    #[diesel(sql_type = Text)]
    pub content: String,
}

/// The first version of these AuditEvents' resource rows (those that exist).
pub fn event_rows(conn: &mut DbConn, ids: &[String]) -> FhirResult<Vec<StoredEvent>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Sql::new(
        "SELECT res_id, content FROM resource_history WHERE res_type = 'AuditEvent' \
         AND version = 1 AND res_id IN ",
    );
    q.text_list(ids);
    Ok(q.load(conn)?)
}

#[derive(Debug, QueryableByName)]
struct Census {
    #[diesel(sql_type = BigInt)]
    mark: i64,
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

/// How far the resource rows have been written, and how many AuditEvent versions there are:
/// read in one statement, so both describe the same moment.
pub fn census(conn: &mut DbConn) -> FhirResult<(i64, i64)> {
    let c: Census = Sql::new(
        "SELECT COALESCE((SELECT seq FROM audit_materialized WHERE id = 1), 0) AS mark, \
         (SELECT COUNT(*) FROM resource_history WHERE res_type = 'AuditEvent') AS rows",
    )
    .load::<Census>(conn)?
    .into_iter()
    .next()
    .ok_or_else(|| crate::error::FhirError::Internal("no census row".into()))?;
    Ok((c.mark, c.rows))
}

#[derive(Debug, QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    res_id: String,
}

/// An AuditEvent with a second version (updated behind the server's back).
pub fn revised_event(conn: &mut DbConn) -> FhirResult<Option<String>> {
    let q = Sql::new(
        "SELECT res_id FROM resource_history WHERE res_type = 'AuditEvent' AND version <> 1 \
         ORDER BY seq LIMIT 1",
    );
    Ok(q.load::<IdRow>(conn)?.into_iter().next().map(|r| r.res_id))
}

/// The ids of AuditEvent versions, in the order they were written, after history row `after`:
/// `(history seq, id)`.
pub fn event_ids_after(
    conn: &mut DbConn,
    after: i64,
    limit: i64,
) -> FhirResult<Vec<(i64, String)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        res_id: String,
    }
    let mut q = Sql::new(
        "SELECT seq, res_id FROM resource_history WHERE res_type = 'AuditEvent' AND seq > ",
    );
    q.int(after).push(" ORDER BY seq LIMIT ").int(limit);
    Ok(q.load::<Row>(conn)?
        .into_iter()
        .map(|r| (r.seq, r.res_id))
        .collect())
}

/// How far the AuditEvent resource rows have been written.
pub fn materialized(conn: &mut DbConn) -> FhirResult<i64> {
    Ok(super::first_row(
        audit_materialized::table
            .select(audit_materialized::seq)
            .find(1),
        conn,
    )?
    .unwrap_or(0))
}

/// Whether logged events wait for their resource rows.
pub fn behind(conn: &mut DbConn) -> FhirResult<bool> {
    let done = materialized(conn)?;
    any_after(conn, done)
}

/// A logged AuditEvent whose resource row is to be written.
#[derive(Debug)]
pub struct Pending {
    /// Its hash as the block records it (empty if the block's hashes are garbled).
    pub hash: String,
    pub event_id: String,
    pub recorded: i64,
    pub content: String,
}

/// A chunk of the log for the materializer.
pub struct PendingChunk {
    /// The events whose resource rows are to be written.
    pub rows: Vec<Pending>,
    /// Where the mark moves once they are; None when nothing waits.
    pub last: Option<i64>,
    /// Whether more may wait after this chunk.
    pub full: bool,
}

/// Takes the materializer's lock for this transaction; the events after the mark, in the whole
/// blocks that end within `limit` events of it (or the next block, if it alone is longer), minus
/// any whose resource row exists.
pub fn lock_pending(conn: &mut DbConn, limit: i64) -> FhirResult<PendingChunk> {
    if let DbConn::Postgres(_) = conn {
        conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({MATERIALIZE_LOCK})"))?;
    }
    let done = materialized(conn)?;
    let mut blocks = blocks_within(conn, done, done.saturating_add(limit))?;
    if blocks.is_empty() {
        blocks = blocks_after(conn, done, 1)?;
    }
    let mut rows = Vec::new();
    let last = blocks.last().map(|b| b.seq);
    for b in blocks {
        // An altered block cannot be indexed; `audit verify` reports it. The rest of the log
        // still is.
        let unpacked = match crate::audit::block::unpack(&b.body) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(block = b.seq, error = %e, "an audit block cannot be read");
                continue;
            }
        };
        for (i, content) in unpacked.into_iter().enumerate() {
            // A mark set back by hand may fall inside a block.
            if b.first() + i as i64 <= done {
                continue;
            }
            let Some((event_id, recorded)) = crate::audit::block::id_and_time(&content) else {
                tracing::error!(
                    block = b.seq,
                    "an audit block holds something else than an AuditEvent"
                );
                continue;
            };
            rows.push(Pending {
                hash: b.hash(i).unwrap_or_default().to_string(),
                event_id,
                recorded,
                content,
            });
        }
    }
    let Some(end) = last else {
        return Ok(PendingChunk {
            rows,
            last: None,
            full: false,
        });
    };
    let full = any_after(conn, end)?;
    // The mark only moves forward, so an event's rows are never written twice; if it was set back
    // by hand, rows already written are skipped rather than duplicated.
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    let existing: std::collections::HashSet<String> = event_rows(conn, &ids)?
        .into_iter()
        .map(|r| r.res_id)
        .collect();
    Ok(PendingChunk {
        rows: rows
            .into_iter()
            .filter(|r| !existing.contains(&r.event_id))
            .collect(),
        last,
        full,
    })
}

/// Moves the mark to `seq`.
pub fn mark_materialized(conn: &mut DbConn, seq: i64) -> FhirResult<()> {
    diesel::update(
        audit_materialized::table
            .find(1)
            .filter(audit_materialized::seq.lt(seq)),
    )
    .set(audit_materialized::seq.eq(seq))
    .execute(conn)?;
    Ok(())
}
