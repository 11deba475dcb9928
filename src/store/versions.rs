//! Versioned resources: every write appends a row to `resource_history` and moves the pointer in
//! `resources` with a compare-and-swap on the version, so two writers can never both win a version.

use diesel::prelude::*;

use super::schema::{resource_history as rh, resources as cur};
use super::sql::Sql;
use super::DbConn;
use crate::error::{FhirError, FhirResult};

/// One stored version of a resource (a tombstone has `deleted == 1` and empty content).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rh)]
pub struct VersionRow {
    pub seq: i64,
    pub res_type: String,
    pub res_id: String,
    pub version: i64,
    pub last_updated: i64,
    pub method: String,
    pub deleted: i16,
    pub content: String,
}

impl VersionRow {
    pub fn is_deleted(&self) -> bool {
        self.deleted != 0
    }
}

/// The current-version pointer of a resource.
#[derive(Debug, Clone, Copy, Queryable, Selectable)]
#[diesel(table_name = cur)]
pub struct CurrentRow {
    pub rid: i64,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: i16,
}

/// A version about to be written.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = rh)]
pub struct NewVersion {
    pub res_type: String,
    pub res_id: String,
    pub version: i64,
    pub last_updated: i64,
    pub method: String,
    pub deleted: i16,
    pub content: String,
}

pub fn current(conn: &mut DbConn, ty: &str, id: &str) -> FhirResult<Option<CurrentRow>> {
    super::first_row(
        cur::table
            .filter(cur::res_type.eq(ty))
            .filter(cur::res_id.eq(id))
            .select(CurrentRow::as_select()),
        conn,
    )
}

/// `current` for a writer: first takes the row lock (a no-op UPDATE, which both backends support,
/// where `FOR UPDATE` is PostgreSQL-only), so concurrent writers of one resource queue up instead of
/// failing their compare-and-swap, and what is read stays current until the transaction ends.
pub fn current_for_update(conn: &mut DbConn, ty: &str, id: &str) -> FhirResult<Option<CurrentRow>> {
    diesel::update(
        cur::table
            .filter(cur::res_type.eq(ty))
            .filter(cur::res_id.eq(id)),
    )
    .set(cur::version.eq(cur::version))
    .execute(conn)?;
    current(conn, ty, id)
}

/// The newest version (possibly a tombstone), or the given one.
pub fn version(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    version: Option<i64>,
) -> FhirResult<Option<VersionRow>> {
    let q = rh::table
        .filter(rh::res_type.eq(ty))
        .filter(rh::res_id.eq(id))
        .select(VersionRow::as_select());
    let row = match version {
        Some(v) => super::first_row(q.filter(rh::version.eq(v)), conn)?,
        None => super::first_row(q.order(rh::version.desc()), conn)?,
    };
    Ok(row)
}

/// Appends `new` as the next version after `prev` (None: the resource does not exist yet) and
/// returns the resource's row id. Fails with `WriteConflict` if another transaction moved the
/// resource on in the meantime.
/// Appends brand-new resources of one type (first versions, such as a batch of AuditEvents) in a
/// few statements; their row ids, in order.
pub fn append_new_many(conn: &mut DbConn, news: &[NewVersion]) -> FhirResult<Vec<i64>> {
    for n in news {
        super::cache::touched(&n.res_type, &n.res_id);
    }
    let found: std::collections::HashMap<(String, String), i64> = if let DbConn::Postgres(pg) = conn
    {
        append_new_unnest(pg, news)?.into_iter().collect()
    } else {
        append_new_values(conn, news)?
    };
    news.iter()
        .map(|n| {
            found
                .get(&(n.res_type.clone(), n.res_id.clone()))
                .copied()
                .ok_or_else(|| FhirError::Internal(format!("row id of {} not found", n.res_id)))
        })
        .collect()
}

/// SQLite: the rows of `append_new_many` as multi-row VALUES statements.
fn append_new_values(
    conn: &mut DbConn,
    news: &[NewVersion],
) -> FhirResult<std::collections::HashMap<(String, String), i64>> {
    let mut found = std::collections::HashMap::new();
    for chunk in news.chunks(400) {
        let mut cur_q = Sql::new(
            "INSERT INTO resources (res_type, res_id, version, last_updated, deleted) VALUES ",
        );
        let mut hist_q = Sql::new(
            "INSERT INTO resource_history (res_type, res_id, version, last_updated, method, \
             deleted, content) VALUES ",
        );
        for (i, n) in chunk.iter().enumerate() {
            if i > 0 {
                cur_q.push(", ");
                hist_q.push(", ");
            }
            cur_q
                .push("(")
                .text(&n.res_type)
                .push(", ")
                .text(&n.res_id)
                .push(", ");
            cur_q
                .int(n.version)
                .push(", ")
                .int(n.last_updated)
                .push(", ");
            cur_q.int(i64::from(n.deleted)).push(")");
            hist_q
                .push("(")
                .text(&n.res_type)
                .push(", ")
                .text(&n.res_id)
                .push(", ");
            hist_q
                .int(n.version)
                .push(", ")
                .int(n.last_updated)
                .push(", ");
            hist_q
                .text(&n.method)
                .push(", ")
                .int(i64::from(n.deleted))
                .push(", ");
            hist_q.text(&n.content).push(")");
        }
        // The row ids come back from the insert itself: a lookup by id afterwards may be planned
        // as a scan while the table's statistics are stale (a bulk load, the audit trail).
        cur_q.push(" RETURNING res_type, res_id, rid");
        found.extend(
            cur_q
                .load::<IdRid>(conn)?
                .into_iter()
                .map(|r| ((r.res_type, r.res_id), r.rid)),
        );
        hist_q.execute(conn)?;
    }
    Ok(found)
}

/// PostgreSQL: the rows of `append_new_many` as unnested arrays, two statements of constant size.
fn append_new_unnest(
    pg: &mut diesel::PgConnection,
    news: &[NewVersion],
) -> FhirResult<Vec<((String, String), i64)>> {
    use diesel::sql_types::{Array, BigInt, SmallInt, Text};
    let col = |f: &dyn Fn(&NewVersion) -> String| news.iter().map(f).collect::<Vec<String>>();
    let (types, ids) = (col(&|n| n.res_type.clone()), col(&|n| n.res_id.clone()));
    let versions: Vec<i64> = news.iter().map(|n| n.version).collect();
    let times: Vec<i64> = news.iter().map(|n| n.last_updated).collect();
    let deleted: Vec<i16> = news.iter().map(|n| n.deleted).collect();
    let rows: Vec<IdRid> = diesel::sql_query(
        "INSERT INTO resources (res_type, res_id, version, last_updated, deleted) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::smallint[]) \
         RETURNING res_type, res_id, rid",
    )
    .bind::<Array<Text>, _>(&types)
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<BigInt>, _>(&versions)
    .bind::<Array<BigInt>, _>(&times)
    .bind::<Array<SmallInt>, _>(&deleted)
    .load(pg)?;
    diesel::sql_query(
        "INSERT INTO resource_history (res_type, res_id, version, last_updated, method, deleted, \
         content) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], \
         $5::text[], $6::smallint[], $7::text[])",
    )
    .bind::<Array<Text>, _>(&types)
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<BigInt>, _>(&versions)
    .bind::<Array<BigInt>, _>(&times)
    .bind::<Array<Text>, _>(col(&|n| n.method.clone()))
    .bind::<Array<SmallInt>, _>(&deleted)
    .bind::<Array<Text>, _>(col(&|n| n.content.clone()))
    .execute(pg)?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.res_type, r.res_id), r.rid))
        .collect())
}

#[derive(QueryableByName)]
struct IdRid {
    #[diesel(sql_type = diesel::sql_types::Text)]
    res_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    res_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rid: i64,
}

pub fn append(conn: &mut DbConn, prev: Option<&CurrentRow>, new: &NewVersion) -> FhirResult<i64> {
    super::cache::touched(&new.res_type, &new.res_id);
    let rid = match prev {
        None => {
            diesel::insert_into(cur::table)
                .values((
                    cur::res_type.eq(&new.res_type),
                    cur::res_id.eq(&new.res_id),
                    cur::version.eq(new.version),
                    cur::last_updated.eq(new.last_updated),
                    cur::deleted.eq(new.deleted),
                ))
                .execute(conn)?;
            // No RETURNING across both backends: read the new row id back.
            super::first_row(
                cur::table
                    .filter(cur::res_type.eq(&new.res_type))
                    .filter(cur::res_id.eq(&new.res_id))
                    .select(cur::rid),
                conn,
            )?
            .ok_or_else(|| FhirError::Internal(format!("row id of {} not found", new.res_id)))?
        }
        Some(p) => {
            let swapped = diesel::update(
                cur::table
                    .filter(cur::res_type.eq(&new.res_type))
                    .filter(cur::res_id.eq(&new.res_id))
                    .filter(cur::version.eq(p.version)),
            )
            .set((
                cur::version.eq(new.version),
                cur::last_updated.eq(new.last_updated),
                cur::deleted.eq(new.deleted),
            ))
            .execute(conn)?;
            if swapped != 1 {
                return Err(FhirError::WriteConflict);
            }
            p.rid
        }
    };
    diesel::insert_into(rh::table).values(new).execute(conn)?;
    Ok(rid)
}

/// What a history interaction asks for. Results come newest first, `limit` at a time; `before` is
/// the (last_updated, seq) keyset cursor of the previous page's last entry.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub res_type: Option<String>,
    pub res_id: Option<String>,
    /// Only these types (system history of a caller who may not see every type).
    pub types: Option<Vec<String>>,
    /// Only versions written at or after this instant (µs).
    pub since: Option<i64>,
    /// Only versions current at some point in `[start, end)` (µs).
    pub at: Option<(i64, i64)>,
    pub before: Option<(i64, i64)>,
    pub limit: i64,
}

pub fn history(conn: &mut DbConn, q: &HistoryQuery) -> FhirResult<Vec<VersionRow>> {
    let mut query = rh::table.select(VersionRow::as_select()).into_boxed();
    if let Some(t) = &q.res_type {
        query = query.filter(rh::res_type.eq(t.clone()));
    }
    if let Some(id) = &q.res_id {
        query = query.filter(rh::res_id.eq(id.clone()));
    }
    if let Some(types) = &q.types {
        query = query.filter(rh::res_type.eq_any(types.clone()));
    }
    if let Some(since) = q.since {
        query = query.filter(rh::last_updated.ge(since));
    }
    if let Some((start, end)) = q.at {
        let later = diesel::alias!(rh as later);
        query = query
            .filter(rh::last_updated.lt(end))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                later
                    .filter(later.field(rh::res_type).eq(rh::res_type))
                    .filter(later.field(rh::res_id).eq(rh::res_id))
                    .filter(later.field(rh::version).gt(rh::version))
                    .filter(later.field(rh::last_updated).le(start)),
            )));
    }
    if let Some((lu, seq)) = q.before {
        query = query.filter(
            rh::last_updated
                .lt(lu)
                .or(rh::last_updated.eq(lu).and(rh::seq.lt(seq))),
        );
    }
    Ok(query
        .order((rh::last_updated.desc(), rh::seq.desc()))
        .limit(q.limit)
        .load(conn)?)
}

/// Takes a PostgreSQL transaction-level advisory lock on `key` (released at commit or rollback).
pub fn advisory_xact_lock(conn: &mut DbConn, key: i64) -> FhirResult<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({key})"))?;
    Ok(())
}
