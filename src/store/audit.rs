//! The audit log's table: one link per AuditEvent, in order, holding the event as stored (its
//! content and when it was recorded) and its hashes; and the queries `audit verify`, `audit
//! export` and the materializer read it with. The AuditEvent resource rows that reads and
//! searches use are written from the links later (`audit_materialized` says how far).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::schema::{audit_chain, audit_materialized};
use super::sql::Sql;
use super::DbConn;
use crate::error::FhirResult;

/// The PostgreSQL advisory lock that serializes appends to the chain across instances.
const CHAIN_LOCK: i64 = 0x0000_ca1a_0d17;
/// The PostgreSQL advisory lock that serializes materializers across instances.
const MATERIALIZE_LOCK: i64 = 0x0000_ca1a_0d18;

/// The head of the chain: what the next link builds on.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_chain)]
pub struct Head {
    pub seq: i64,
    pub chain_hash: String,
}

/// One link as appended: the event, its hash and the chain hash.
#[derive(Debug, Clone)]
pub struct Link {
    pub seq: i64,
    pub event_id: String,
    pub event_hash: String,
    pub chain_hash: String,
    pub recorded: i64,
    pub content: String,
}

/// Takes the chain for this transaction (on SQLite the write transaction already holds the
/// database) and returns its last link.
pub fn lock_head(conn: &mut DbConn) -> FhirResult<Option<Head>> {
    if let DbConn::Postgres(_) = conn {
        conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({CHAIN_LOCK})"))?;
    }
    super::first_row(
        audit_chain::table
            .select(Head::as_select())
            .order(audit_chain::seq.desc()),
        conn,
    )
}

/// Inserts links: on SQLite one row per statement, a statement prepared once per connection (a
/// multi-row VALUES list is parsed anew for every batch size); on PostgreSQL one statement of
/// arrays.
pub fn insert_many(conn: &mut DbConn, links: &[Link]) -> FhirResult<()> {
    if let DbConn::Postgres(pg) = conn {
        return insert_unnest(pg, links);
    }
    for l in links {
        diesel::insert_into(audit_chain::table)
            .values((
                audit_chain::seq.eq(l.seq),
                audit_chain::event_id.eq(&l.event_id),
                audit_chain::event_hash.eq(&l.event_hash),
                audit_chain::chain_hash.eq(&l.chain_hash),
                audit_chain::recorded.eq(l.recorded),
                audit_chain::content.eq(&l.content),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// PostgreSQL: the links as six arrays, so the statement (and its plan) is the same whatever the
/// batch size, where a VALUES list of six parameters per link is parsed and planned anew.
fn insert_unnest(pg: &mut diesel::PgConnection, links: &[Link]) -> FhirResult<()> {
    use diesel::sql_types::{Array, BigInt, Text};
    let text = |f: fn(&Link) -> &str| links.iter().map(f).collect::<Vec<&str>>();
    let ints = |f: fn(&Link) -> i64| links.iter().map(f).collect::<Vec<i64>>();
    diesel::sql_query(
        "INSERT INTO audit_chain (seq, event_id, event_hash, chain_hash, recorded, content) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
         $6::text[])",
    )
    .bind::<Array<BigInt>, _>(ints(|l| l.seq))
    .bind::<Array<Text>, _>(text(|l| &l.event_id))
    .bind::<Array<Text>, _>(text(|l| &l.event_hash))
    .bind::<Array<Text>, _>(text(|l| &l.chain_hash))
    .bind::<Array<BigInt>, _>(ints(|l| l.recorded))
    .bind::<Array<Text>, _>(text(|l| &l.content))
    .execute(pg)?;
    Ok(())
}

/// A link with its AuditEvent: as the link holds it, and as its resource row holds it.
#[derive(Debug, QueryableByName)]
pub struct LinkedEvent {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub event_hash: String,
    #[diesel(sql_type = Text)]
    pub chain_hash: String,
    /// The event in the link (None for links from before the log held events).
    #[diesel(sql_type = Nullable<Text>)]
    pub logged: Option<String>,
    /// The AuditEvent's resource row; None when there is none (not materialized yet, or gone).
    #[diesel(sql_type = Nullable<Text>)]
    pub content: Option<String>,
}

/// The links after `seq`, in order, with their events.
pub fn links_after(conn: &mut DbConn, seq: i64, limit: i64) -> FhirResult<Vec<LinkedEvent>> {
    let mut q = Sql::new(
        "SELECT c.seq AS seq, c.event_id AS event_id, c.event_hash AS event_hash, \
         c.chain_hash AS chain_hash, c.content AS logged, h.content AS content FROM audit_chain c \
         LEFT JOIN resource_history h ON h.res_type = 'AuditEvent' AND h.res_id = c.event_id \
         AND h.version = 1 WHERE c.seq > ",
    );
    q.int(seq).push(" ORDER BY c.seq LIMIT ").int(limit);
    Ok(q.load(conn)?)
}

#[derive(Debug, QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    res_id: String,
}

/// An AuditEvent version the chain does not account for: one inserted outside it, or a second
/// version of one (an update).
pub fn unchained_event(conn: &mut DbConn) -> FhirResult<Option<String>> {
    let q = Sql::new(
        "SELECT h.res_id AS res_id FROM resource_history h WHERE h.res_type = 'AuditEvent' AND \
         (h.version <> 1 OR NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = h.res_id)) \
         ORDER BY h.seq LIMIT 1",
    );
    Ok(q.load::<IdRow>(conn)?.into_iter().next().map(|r| r.res_id))
}

#[derive(Debug, QueryableByName)]
pub struct EventRow {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub content: String,
}

/// AuditEvents recorded at or after `since` (µs), in chain order, after chain position `after`.
pub fn events_since(
    conn: &mut DbConn,
    since: i64,
    after: i64,
    limit: i64,
) -> FhirResult<Vec<EventRow>> {
    let mut q = Sql::new(
        "SELECT c.seq AS seq, COALESCE(c.content, h.content) AS content FROM audit_chain c \
         LEFT JOIN resource_history h ON c.content IS NULL AND h.res_type = 'AuditEvent' \
         AND h.res_id = c.event_id AND h.version = 1 WHERE c.seq > ",
    );
    q.int(after)
        .push(" AND COALESCE(c.recorded, h.last_updated) >= ")
        .int(since)
        .push(" AND COALESCE(c.content, h.content) IS NOT NULL ORDER BY c.seq LIMIT ")
        .int(limit);
    Ok(q.load(conn)?)
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

/// Whether links wait for their resource rows.
pub fn behind(conn: &mut DbConn) -> FhirResult<bool> {
    let done = materialized(conn)?;
    Ok(audit_chain::table
        .select(audit_chain::seq)
        .filter(audit_chain::seq.gt(done))
        .first::<i64>(conn)
        .optional()?
        .is_some())
}

/// A link whose AuditEvent has no resource row yet.
#[derive(Debug, QueryableByName)]
pub struct Pending {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = BigInt)]
    pub recorded: i64,
    #[diesel(sql_type = Text)]
    pub content: String,
}

/// A chunk of links for the materializer.
pub struct PendingChunk {
    /// The links whose resource rows are to be written.
    pub rows: Vec<Pending>,
    /// Where the mark moves once they are; None when nothing waits.
    pub last: Option<i64>,
    /// Whether more links may wait after this chunk.
    pub full: bool,
}

/// Takes the materializer's lock for this transaction; the links after the mark (at most
/// `limit`), minus any whose resource row exists.
pub fn lock_pending(conn: &mut DbConn, limit: i64) -> FhirResult<PendingChunk> {
    if let DbConn::Postgres(_) = conn {
        conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({MATERIALIZE_LOCK})"))?;
    }
    let done = materialized(conn)?;
    let mut q = Sql::new(
        "SELECT c.seq AS seq, c.event_id AS event_id, c.recorded AS recorded, \
         c.content AS content FROM audit_chain c WHERE c.seq > ",
    );
    q.int(done)
        .push(" AND c.content IS NOT NULL AND c.recorded IS NOT NULL ORDER BY c.seq LIMIT ")
        .int(limit);
    let rows: Vec<Pending> = q.load(conn)?;
    let full = rows.len() as i64 >= limit;
    let Some(last) = rows.last().map(|r| r.seq) else {
        return Ok(PendingChunk {
            rows,
            last: None,
            full: false,
        });
    };
    // The mark only moves forward, so a link's rows are never written twice; if it was set back
    // by hand, rows already written are skipped rather than duplicated.
    let mut q = Sql::new(
        "SELECT res_id FROM resource_history WHERE res_type = 'AuditEvent' AND res_id IN (",
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.text(&r.event_id);
    }
    q.push(")");
    let existing: std::collections::HashSet<String> = q
        .load::<IdRow>(conn)?
        .into_iter()
        .map(|r| r.res_id)
        .collect();
    Ok(PendingChunk {
        rows: rows
            .into_iter()
            .filter(|r| !existing.contains(&r.event_id))
            .collect(),
        last: Some(last),
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
