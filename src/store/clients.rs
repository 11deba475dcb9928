//! The built-in authorization server's tables: registered Backend Services clients, and the
//! client assertion ids already used (replay protection shared by every instance).

use diesel::prelude::*;

use super::schema::{auth_assertions, auth_clients};
use super::DbConn;
use crate::error::{FhirError, FhirResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = auth_clients)]
pub struct ClientRow {
    pub client_id: String,
    pub jwks: String,
    pub scope: String,
    pub created: i64,
}

/// Registers a client, or replaces its keys and scopes.
pub fn put_client(conn: &mut DbConn, row: &ClientRow) -> FhirResult<()> {
    diesel::delete(auth_clients::table.find(&row.client_id)).execute(conn)?;
    diesel::insert_into(auth_clients::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn client(conn: &mut DbConn, client_id: &str) -> FhirResult<Option<ClientRow>> {
    Ok(auth_clients::table
        .find(client_id)
        .select(ClientRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn clients(conn: &mut DbConn) -> FhirResult<Vec<ClientRow>> {
    Ok(auth_clients::table
        .select(ClientRow::as_select())
        .order(auth_clients::client_id)
        .load(conn)?)
}

/// Removes a client; false if there was none.
pub fn remove_client(conn: &mut DbConn, client_id: &str) -> FhirResult<bool> {
    Ok(diesel::delete(auth_clients::table.find(client_id)).execute(conn)? > 0)
}

/// Records a client assertion's `jti` (kept until `expires`, in seconds). False if it was already
/// used: a replay. Expired ids are purged on the way.
pub fn use_assertion(
    conn: &mut DbConn,
    client_id: &str,
    jti: &str,
    expires: i64,
    now: i64,
) -> FhirResult<bool> {
    diesel::delete(auth_assertions::table.filter(auth_assertions::expires.lt(now)))
        .execute(conn)?;
    // In a savepoint: on PostgreSQL a failed insert would otherwise abort the whole transaction.
    let inserted = conn.transaction(|c| {
        diesel::insert_into(auth_assertions::table)
            .values((
                auth_assertions::client_id.eq(client_id),
                auth_assertions::jti.eq(jti),
                auth_assertions::expires.eq(expires),
            ))
            .execute(c)
    });
    match inserted {
        Ok(_) => Ok(true),
        Err(e) => match FhirError::from(e) {
            FhirError::WriteConflict => Ok(false),
            other => Err(other),
        },
    }
}
