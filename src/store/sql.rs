//! A dynamic SQL statement with bound parameters, for the queries whose shape depends on the
//! request (search). Values are always bound, never spliced into the text; the backend's query
//! builder writes the placeholders (`?` or `$n`), so one builder serves SQLite and PostgreSQL.

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Double, Text, Untyped};
use diesel::{Connection, QueryResult, RunQueryDsl};

use super::DbConn;

type Db = <DbConn as Connection>::Backend;

#[derive(Debug, Clone)]
enum Part {
    Raw(String),
    Text(String),
    Int(i64),
    Float(f64),
}

#[derive(Debug, Clone, Default)]
pub struct Sql {
    parts: Vec<Part>,
}

impl Sql {
    pub fn new(s: &str) -> Sql {
        let mut q = Sql::default();
        q.push(s);
        q
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.parts.push(Part::Raw(s.to_string()));
        self
    }

    pub fn text(&mut self, v: &str) -> &mut Self {
        self.parts.push(Part::Text(v.to_string()));
        self
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        self.parts.push(Part::Int(v));
        self
    }

    pub fn float(&mut self, v: f64) -> &mut Self {
        self.parts.push(Part::Float(v));
        self
    }

    pub fn append(&mut self, other: Sql) -> &mut Self {
        self.parts.extend(other.parts);
        self
    }

    /// `(a, b, c)` of bound texts.
    pub fn text_list(&mut self, values: &[String]) -> &mut Self {
        self.push("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.text(v);
        }
        self.push(")")
    }

    /// `(1, 2, 3)` of bound integers.
    pub fn int_list(&mut self, values: &[i64]) -> &mut Self {
        self.push("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.int(*v);
        }
        self.push(")")
    }
}

impl QueryFragment<Db> for Sql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Db>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        for p in &self.parts {
            match p {
                Part::Raw(s) => out.push_sql(s),
                Part::Text(v) => out.push_bind_param::<Text, _>(v)?,
                Part::Int(v) => out.push_bind_param::<BigInt, _>(v)?,
                Part::Float(v) => out.push_bind_param::<Double, _>(v)?,
            }
        }
        Ok(())
    }
}

impl QueryId for Sql {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Sql {
    type SqlType = Untyped;
}

impl RunQueryDsl<DbConn> for Sql {}
