//! The audit chain's table: one link per AuditEvent, in order, and the queries `audit verify` and
//! `audit export` read it with. AuditEvents themselves are ordinary rows of `resource_history`.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use super::schema::audit_chain;
use super::sql::Sql;
use super::DbConn;
use crate::error::FhirResult;

/// The PostgreSQL advisory lock that serializes appends to the chain across instances.
const CHAIN_LOCK: i64 = 0x0000_ca1a_0d17;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, QueryableByName)]
#[diesel(table_name = audit_chain)]
pub struct Link {
    pub seq: i64,
    pub event_id: String,
    pub event_hash: String,
    pub chain_hash: String,
}

/// Takes the chain for this transaction (on SQLite the write transaction already holds the
/// database) and returns its last link.
pub fn lock_head(conn: &mut DbConn) -> FhirResult<Option<Link>> {
    if let DbConn::Postgres(_) = conn {
        conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({CHAIN_LOCK})"))?;
    }
    Ok(audit_chain::table
        .select(Link::as_select())
        .order(audit_chain::seq.desc())
        .first(conn)
        .optional()?)
}

/// Inserts links in multi-row statements.
pub fn insert_many(conn: &mut DbConn, links: &[Link]) -> FhirResult<()> {
    for chunk in links.chunks(500) {
        let mut q =
            Sql::new("INSERT INTO audit_chain (seq, event_id, event_hash, chain_hash) VALUES ");
        for (i, l) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push("(")
                .int(l.seq)
                .push(", ")
                .text(&l.event_id)
                .push(", ");
            q.text(&l.event_hash)
                .push(", ")
                .text(&l.chain_hash)
                .push(")");
        }
        q.execute(conn)?;
    }
    Ok(())
}

/// A link with the AuditEvent it covers, as stored now.
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
    /// None when the AuditEvent's row is gone.
    #[diesel(sql_type = Nullable<Text>)]
    pub content: Option<String>,
}

/// The links after `seq`, in order, with their events' stored content.
pub fn links_after(conn: &mut DbConn, seq: i64, limit: i64) -> FhirResult<Vec<LinkedEvent>> {
    let mut q = Sql::new(
        "SELECT c.seq AS seq, c.event_id AS event_id, c.event_hash AS event_hash, \
         c.chain_hash AS chain_hash, h.content AS content FROM audit_chain c \
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

/// AuditEvents stored at or after `since` (µs), in chain order, after chain position `after`.
pub fn events_since(
    conn: &mut DbConn,
    since: i64,
    after: i64,
    limit: i64,
) -> FhirResult<Vec<EventRow>> {
    let mut q = Sql::new(
        "SELECT c.seq AS seq, h.content AS content FROM audit_chain c JOIN resource_history h \
         ON h.res_type = 'AuditEvent' AND h.res_id = c.event_id AND h.version = 1 WHERE c.seq > ",
    );
    q.int(after)
        .push(" AND h.last_updated >= ")
        .int(since)
        .push(" ORDER BY c.seq LIMIT ")
        .int(limit);
    Ok(q.load(conn)?)
}
