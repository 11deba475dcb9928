//! Search in SQL: writing a resource's index rows, and turning a `search::SearchQuery` plan into
//! one statement over `resources` with an EXISTS per condition on the typed index tables.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};

use std::collections::{HashMap, HashSet};

use super::sql::Sql;
use super::{Backend, DbConn};
use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::{
    Condition, Include, IndexEntry, IndexValue, Match, ParamType, Prefix, SearchQuery, SortKey,
    StringMatch, Summary, Total, UriMatch, Visibility,
};

/// Iterations of `:iterate` includes, at most.
const MAX_ITERATE: usize = 3;
/// Included resources per page, at most.
const MAX_INCLUDES: usize = 1000;

const INDEX_TABLES: &[&str] = &[
    "idx_string",
    "idx_token",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
    "idx_composite",
];

/// Replaces the index rows of resource `rid` with `entries` (none for a deletion). `fresh`: the
/// resource is new, so it has no rows to delete.
pub fn replace_index(
    conn: &mut DbConn,
    rid: i64,
    entries: &[IndexEntry],
    fresh: bool,
) -> FhirResult<()> {
    if !fresh {
        for t in INDEX_TABLES {
            let mut q = Sql::new(&format!("DELETE FROM {t} WHERE rid = "));
            q.int(rid);
            q.execute(conn)?;
        }
    }
    insert_rows(conn, entries.iter().map(|e| (rid, e)))
}

/// The index rows of several new resources at once (a batch of AuditEvents).
pub fn insert_index_many(conn: &mut DbConn, rows: &[(i64, Vec<IndexEntry>)]) -> FhirResult<()> {
    insert_rows(
        conn,
        rows.iter()
            .flat_map(|(rid, entries)| entries.iter().map(move |e| (*rid, e))),
    )
}

/// One multi-row INSERT per table (in chunks, under both backends' bind-parameter limits).
fn insert_rows<'a>(
    conn: &mut DbConn,
    rows: impl Iterator<Item = (i64, &'a IndexEntry)>,
) -> FhirResult<()> {
    // (table, its value columns, rows)
    type Rows<'e> = Vec<(i64, &'e IndexEntry)>;
    let mut by_table: Vec<(&'static str, &'static str, Rows)> = Vec::new();
    for (rid, e) in rows {
        let (table, cols) = columns(&e.value);
        match by_table.iter_mut().find(|(t, _, _)| *t == table) {
            Some((_, _, rows)) => rows.push((rid, e)),
            None => by_table.push((table, cols, vec![(rid, e)])),
        }
    }
    for (table, cols, rows) in by_table {
        if let DbConn::Postgres(pg) = conn {
            // One statement of constant size whatever the row count: the columns as arrays,
            // unnested. PostgreSQL parses and plans a long VALUES list row by row.
            insert_unnest(pg, table, cols, &rows)?;
            continue;
        }
        for chunk in rows.chunks(500) {
            let mut q = Sql::new(&format!("INSERT INTO {table} (rid, param, {cols}) VALUES "));
            for (i, (rid, e)) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.push("(");
                for (j, cell) in cells(*rid, e).into_iter().enumerate() {
                    if j > 0 {
                        q.push(", ");
                    }
                    match cell {
                        Cell::Int(Some(v)) => q.int(v),
                        Cell::Float(Some(v)) => q.float(v),
                        Cell::Text(v) => q.text(&v),
                        Cell::Int(None) | Cell::Float(None) => q.push("NULL"),
                    };
                }
                q.push(")");
            }
            q.execute(conn)?;
        }
    }
    Ok(())
}

/// One column value of an index row.
enum Cell {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(String),
}

/// A column of index rows, for `unnest`.
enum Column {
    Ints(Vec<Option<i64>>),
    Floats(Vec<Option<f64>>),
    Texts(Vec<String>),
}

fn insert_unnest(
    pg: &mut diesel::PgConnection,
    table: &str,
    cols: &str,
    rows: &[(i64, &IndexEntry)],
) -> FhirResult<()> {
    use diesel::sql_types::{Array, Double, Nullable};
    let mut columns: Vec<Column> = Vec::new();
    for (n, (rid, e)) in rows.iter().enumerate() {
        for (j, cell) in cells(*rid, e).into_iter().enumerate() {
            if n == 0 {
                columns.push(match cell {
                    Cell::Int(_) => Column::Ints(Vec::with_capacity(rows.len())),
                    Cell::Float(_) => Column::Floats(Vec::with_capacity(rows.len())),
                    Cell::Text(_) => Column::Texts(Vec::with_capacity(rows.len())),
                });
            }
            match (&mut columns[j], cell) {
                (Column::Ints(c), Cell::Int(v)) => c.push(v),
                (Column::Floats(c), Cell::Float(v)) => c.push(v),
                (Column::Texts(c), Cell::Text(v)) => c.push(v),
                _ => return Err(FhirError::Internal(format!("{table}: mixed column kinds"))),
            }
        }
    }
    let args: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = match c {
                Column::Ints(_) => "bigint",
                Column::Floats(_) => "float8",
                Column::Texts(_) => "text",
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect();
    let mut q = diesel::sql_query(format!(
        "INSERT INTO {table} (rid, param, {cols}) SELECT * FROM unnest({})",
        args.join(", ")
    ))
    .into_boxed::<diesel::pg::Pg>();
    for c in columns {
        q = match c {
            Column::Ints(v) => q.bind::<Array<Nullable<BigInt>>, _>(v),
            Column::Floats(v) => q.bind::<Array<Nullable<Double>>, _>(v),
            Column::Texts(v) => q.bind::<Array<Text>, _>(v),
        };
    }
    q.execute(pg)?;
    Ok(())
}

fn columns(v: &IndexValue) -> (&'static str, &'static str) {
    match v {
        IndexValue::String { .. } => ("idx_string", "norm, exact"),
        IndexValue::Token { .. } => (
            "idx_token",
            "system, code, text_norm, type_system, type_code",
        ),
        IndexValue::Reference { .. } => (
            "idx_reference",
            "target_type, target_id, url, ident_system, ident_value",
        ),
        IndexValue::Date { .. } => ("idx_date", "lo, hi"),
        IndexValue::Number { .. } => ("idx_number", "lo, hi"),
        IndexValue::Quantity(_) => (
            "idx_quantity",
            "lo, hi, system, code, canon_lo, canon_hi, canon_code",
        ),
        IndexValue::Uri { .. } => ("idx_uri", "value"),
        IndexValue::Composite { .. } => (
            "idx_composite",
            "system1, code1, system2, code2, text2, lo2, hi2, dlo2, dhi2",
        ),
    }
}

/// The `(rid, param, …)` columns of one entry's row.
fn cells(rid: i64, e: &IndexEntry) -> Vec<Cell> {
    let mut out = vec![Cell::Int(Some(rid)), Cell::Text(e.param.clone())];
    let texts = |out: &mut Vec<Cell>, vs: &[&String]| {
        out.extend(vs.iter().map(|v| Cell::Text((*v).clone())));
    };
    match &e.value {
        IndexValue::String { norm, exact } => texts(&mut out, &[norm, exact]),
        IndexValue::Token {
            system,
            code,
            text_norm,
            type_system,
            type_code,
        } => texts(&mut out, &[system, code, text_norm, type_system, type_code]),
        IndexValue::Reference {
            target_type,
            target_id,
            url,
            ident_system,
            ident_value,
        } => texts(
            &mut out,
            &[target_type, target_id, url, ident_system, ident_value],
        ),
        IndexValue::Date { lo, hi } => {
            out.push(Cell::Int(Some(*lo)));
            out.push(Cell::Int(Some(*hi)));
        }
        IndexValue::Number { lo, hi } => {
            out.push(Cell::Float(Some(*lo)));
            out.push(Cell::Float(Some(*hi)));
        }
        IndexValue::Quantity(v) => {
            out.push(Cell::Float(Some(v.lo)));
            out.push(Cell::Float(Some(v.hi)));
            texts(&mut out, &[&v.system, &v.code]);
            let (clo, chi, unit) = match &v.canonical {
                Some((lo, hi, unit)) => (Some(*lo), Some(*hi), unit.clone()),
                None => (None, None, String::new()),
            };
            out.push(Cell::Float(clo));
            out.push(Cell::Float(chi));
            out.push(Cell::Text(unit));
        }
        IndexValue::Uri { value } => texts(&mut out, &[value]),
        IndexValue::Composite {
            system1,
            code1,
            second,
        } => {
            texts(&mut out, &[system1, code1]);
            let empty = String::new();
            let (mut s2, mut c2, mut t2) = (&empty, &empty, &empty);
            let (mut lo2, mut hi2, mut dlo2, mut dhi2) = (None, None, None, None);
            match second.as_ref() {
                IndexValue::Token { system, code, .. } => (s2, c2) = (system, code),
                IndexValue::String { norm, .. } => t2 = norm,
                IndexValue::Quantity(v) => {
                    (lo2, hi2) = (Some(v.lo), Some(v.hi));
                    (s2, c2) = (&v.system, &v.code);
                }
                IndexValue::Number { lo, hi } => (lo2, hi2) = (Some(*lo), Some(*hi)),
                IndexValue::Date { lo, hi } => (dlo2, dhi2) = (Some(*lo), Some(*hi)),
                _ => {}
            }
            texts(&mut out, &[s2, c2, t2]);
            out.push(Cell::Float(lo2));
            out.push(Cell::Float(hi2));
            out.push(Cell::Int(dlo2));
            out.push(Cell::Int(dhi2));
        }
    }
    out
}

/// The table holding a parameter type's index rows.
fn table_of(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "idx_string",
        ParamType::Token => "idx_token",
        ParamType::Reference => "idx_reference",
        ParamType::Date => "idx_date",
        ParamType::Number => "idx_number",
        ParamType::Quantity => "idx_quantity",
        ParamType::Uri => "idx_uri",
        ParamType::Composite => "idx_composite",
        ParamType::Special => "idx_token",
    }
}

/// Builds SQL predicates; `n` numbers the aliases of nested subqueries.
pub struct Planner {
    pub backend: Backend,
    n: usize,
    /// The caller's search visibility, applied to the rows chains and `_has` look at.
    vis: Option<std::sync::Arc<Visibility>>,
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

impl Planner {
    pub fn new(backend: Backend) -> Planner {
        Planner {
            backend,
            n: 0,
            vis: None,
        }
    }

    /// A planner whose chains and `_has` see only what `vis` lets the caller see.
    pub fn with_visibility(backend: Backend, vis: Option<&Visibility>) -> Planner {
        Planner {
            vis: vis.cloned().map(std::sync::Arc::new),
            ..Planner::new(backend)
        }
    }

    /// `((r.res_type = T AND (alt1 OR alt2)) OR …)`: the rows of `types` that `vis` lets the caller
    /// see (`1 = 0` when it sees none of them).
    pub fn visibility(&mut self, q: &mut Sql, vis: &Visibility, types: &[String], r: &str) {
        // The conditions of a grant are plain filters; never apply visibility inside them again.
        let outer = self.vis.take();
        q.push("(");
        let mut any = false;
        for t in types {
            let Some(alts) = vis.types.get(t) else {
                continue;
            };
            if any {
                q.push(" OR ");
            }
            any = true;
            q.push(&format!("({r}.res_type = "));
            q.text(t).push(" AND (");
            for (i, conds) in alts.iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("(");
                if conds.is_empty() {
                    q.push("1 = 1");
                }
                for (j, c) in conds.iter().enumerate() {
                    if j > 0 {
                        q.push(" AND ");
                    }
                    self.condition(q, c, r);
                }
                q.push(")");
            }
            q.push("))");
        }
        if !any {
            q.push("1 = 0");
        }
        q.push(")");
        self.vis = outer;
    }

    /// ` AND <visibility>` for a nested row, when the caller's view is restricted.
    fn restrict(&mut self, q: &mut Sql, types: &[String], r: &str) {
        if let Some(vis) = self.vis.clone() {
            q.push(" AND ");
            self.visibility(q, &vis, types, r);
        }
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}{}", self.n)
    }

    /// Text comparisons in byte order on both backends.
    fn collate(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " COLLATE \"C\"",
            Backend::Sqlite => "",
        }
    }

    /// How well a condition narrows the rows (lower is better), for choosing the one that drives
    /// the query; None: it cannot drive (negations, `:missing`, chains, `_has`).
    fn selectivity(c: &Condition) -> Option<u8> {
        match c {
            Condition::Id(_) => Some(0),
            Condition::Compartment { .. } => Some(1),
            Condition::Param { negate: true, .. } => None,
            Condition::Param { kind, any, .. } => Some(match kind {
                ParamType::Reference
                    if any.iter().all(|m| {
                        matches!(
                            m,
                            Match::Reference {
                                target_id: Some(_),
                                ..
                            }
                        )
                    }) =>
                {
                    1
                }
                ParamType::Token | ParamType::Uri | ParamType::Composite => 3,
                ParamType::String => 4,
                _ => 5,
            }),
            _ => None,
        }
    }

    /// The index of the condition that should drive the query, if any can.
    pub fn driver(conditions: &[Condition]) -> Option<usize> {
        conditions
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Self::selectivity(c).map(|s| (s, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// `c` written as a set of row ids (`r.rid IN (SELECT rid FROM idx_… WHERE …)`), which both
    /// planners turn into an index lookup that drives the query instead of a scan of `resources`.
    pub fn driving_condition(&mut self, q: &mut Sql, c: &Condition, r: &str) {
        match c {
            Condition::Param {
                param,
                kind,
                any,
                negate: false,
            } => {
                let t = self.alias("d");
                q.push(&format!(
                    "{r}.rid IN (SELECT {t}.rid FROM {} {t} WHERE {t}.param = ",
                    table_of(*kind)
                ));
                q.text(param).push(" AND ");
                self.any_of(q, any, &t);
                q.push(")");
            }
            Condition::Compartment {
                comp_type,
                id,
                params,
            } if !params.is_empty() => {
                let t = self.alias("k");
                q.push(&format!(
                    "({r}.rid IN (SELECT {t}.rid FROM idx_reference {t} WHERE {t}.param IN "
                ));
                q.text_list(params).push(&format!(" AND {t}.target_id = "));
                q.text(id).push(&format!(" AND {t}.target_type = "));
                q.text(comp_type).push(&format!(") OR ({r}.res_type = "));
                q.text(comp_type).push(&format!(" AND {r}.res_id = "));
                q.text(id).push("))");
            }
            other => self.condition(q, other, r),
        }
    }

    /// The predicate for `c` on the resource row aliased `r`.
    pub fn condition(&mut self, q: &mut Sql, c: &Condition, r: &str) {
        match c {
            Condition::Id(ids) => {
                if ids.is_empty() {
                    q.push("1 = 0");
                } else {
                    q.push(&format!("{r}.res_id IN "));
                    q.text_list(ids);
                }
            }
            Condition::LastUpdated(any) => {
                q.push("(");
                for (i, m) in any.iter().enumerate() {
                    if i > 0 {
                        q.push(" OR ");
                    }
                    if let Match::Date { prefix, lo, hi } = m {
                        let col = format!("{r}.last_updated");
                        date_range(q, *prefix, *lo, *hi, &col, &format!("({col} + 1)"));
                    }
                }
                q.push(")");
            }
            Condition::Missing {
                param,
                kind,
                missing,
            } => {
                self.probe(q, *kind, param, *missing, r);
                q.push(")");
            }
            Condition::Param {
                param,
                kind,
                any,
                negate,
            } => {
                let t = self.probe(q, *kind, param, *negate, r);
                q.push(" AND ");
                self.any_of(q, any, &t);
                q.push(")");
            }
            Condition::Chain {
                param,
                target_types,
                inner,
            } => {
                let (t, r2) = (self.alias("c"), self.alias("r"));
                q.push(&format!(
                    "EXISTS (SELECT 1 FROM idx_reference {t} JOIN resources {r2} ON {r2}.res_type = {t}.target_type \
                     AND {r2}.res_id = {t}.target_id AND {r2}.deleted = 0 WHERE {t}.rid = {r}.rid AND {t}.param = "
                ));
                q.text(param).push(&format!(" AND {t}.target_type IN "));
                q.text_list(target_types).push(" AND ");
                self.condition(q, inner, &r2);
                self.restrict(q, target_types, &r2);
                q.push(")");
            }
            Condition::Has {
                source_type,
                param,
                inner,
            } => {
                let (t, r2) = (self.alias("h"), self.alias("r"));
                q.push(&format!(
                    "EXISTS (SELECT 1 FROM idx_reference {t} JOIN resources {r2} ON {r2}.rid = {t}.rid \
                     WHERE {r2}.deleted = 0 AND {r2}.res_type = "
                ));
                q.text(source_type).push(&format!(" AND {t}.param = "));
                q.text(param).push(&format!(
                    " AND {t}.target_type = {r}.res_type AND {t}.target_id = {r}.res_id AND "
                ));
                self.condition(q, inner, &r2);
                self.restrict(q, std::slice::from_ref(source_type), &r2);
                q.push(")");
            }
            Condition::Compartment {
                comp_type,
                id,
                params,
            } => {
                let t = self.alias("k");
                q.push(&format!("(({r}.res_type = "));
                q.text(comp_type).push(&format!(" AND {r}.res_id = "));
                q.text(id).push(")");
                if !params.is_empty() {
                    q.push(&format!(" OR EXISTS (SELECT 1 FROM idx_reference {t} WHERE {t}.rid = {r}.rid AND {t}.param IN "));
                    q.text_list(params)
                        .push(&format!(" AND {t}.target_type = "));
                    q.text(comp_type).push(&format!(" AND {t}.target_id = "));
                    q.text(id).push(")");
                }
                q.push(")");
            }
        }
    }

    /// Opens `[NOT] EXISTS (SELECT 1 FROM idx_… t WHERE t.rid = r.rid AND t.param = ?`: a probe of
    /// the resource's own index rows for `param`. Returns the alias; the caller closes the paren.
    fn probe(
        &mut self,
        q: &mut Sql,
        kind: ParamType,
        param: &str,
        negate: bool,
        r: &str,
    ) -> String {
        let t = self.alias("t");
        q.push(if negate {
            "NOT EXISTS (SELECT 1 FROM "
        } else {
            "EXISTS (SELECT 1 FROM "
        });
        q.push(&format!(
            "{} {t} WHERE {t}.rid = {r}.rid AND {t}.param = ",
            table_of(kind)
        ));
        q.text(param);
        t
    }

    /// `(m1 OR m2 …)`: the values a parameter's comma-separated alternatives match.
    fn any_of(&mut self, q: &mut Sql, any: &[Match], t: &str) {
        q.push("(");
        for (i, m) in any.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            self.value(q, m, t);
        }
        q.push(")");
    }

    /// One value match on the index row aliased `t`.
    fn value(&mut self, q: &mut Sql, m: &Match, t: &str) {
        match m {
            Match::String { value, how } => match how {
                StringMatch::Exact => {
                    q.push(&format!("{t}.exact = ")).text(value);
                }
                StringMatch::Prefix => {
                    q.push(&format!("{t}.norm LIKE "))
                        .text(&format!("{}%", like_escape(value)))
                        .push(" ESCAPE '\\'");
                }
                StringMatch::Contains => {
                    q.push(&format!("{t}.norm LIKE "))
                        .text(&format!("%{}%", like_escape(value)))
                        .push(" ESCAPE '\\'");
                }
            },
            Match::Token { system, code } => {
                q.push("(1 = 1");
                if let Some(s) = system {
                    q.push(&format!(" AND {t}.system = ")).text(s);
                }
                match code {
                    Some(c) => {
                        q.push(&format!(" AND {t}.code = ")).text(c);
                    }
                    None => {
                        q.push(&format!(" AND {t}.code <> ''"));
                    }
                }
                q.push(")");
            }
            Match::TokenText(text) => {
                let v = like_escape(text);
                q.push(&format!("({t}.text_norm LIKE "))
                    .text(&format!("{v}%"))
                    .push(&format!(" ESCAPE '\\' OR {t}.text_norm LIKE "))
                    .text(&format!("% {v}%"))
                    .push(" ESCAPE '\\')");
            }
            Match::OfType {
                type_system,
                type_code,
                value,
            } => {
                q.push(&format!("({t}.type_system = ")).text(type_system);
                q.push(&format!(" AND {t}.type_code = ")).text(type_code);
                q.push(&format!(" AND {t}.code = ")).text(value).push(")");
            }
            Match::Reference {
                target_type,
                target_id,
                url,
            } => {
                q.push("(1 = 1");
                if let Some(ty) = target_type {
                    q.push(&format!(" AND {t}.target_type = ")).text(ty);
                }
                if let Some(id) = target_id {
                    q.push(&format!(" AND {t}.target_id = ")).text(id);
                }
                if let Some(u) = url {
                    q.push(&format!(" AND {t}.url = ")).text(u);
                }
                q.push(")");
            }
            Match::RefIdentifier { system, value } => {
                q.push("(1 = 1");
                if let Some(s) = system {
                    q.push(&format!(" AND {t}.ident_system = ")).text(s);
                }
                match value {
                    Some(v) => q.push(&format!(" AND {t}.ident_value = ")).text(v),
                    None => q.push(&format!(" AND {t}.ident_value <> ''")),
                };
                q.push(")");
            }
            Match::Date { prefix, lo, hi } => {
                date_range(q, *prefix, *lo, *hi, &format!("{t}.lo"), &format!("{t}.hi"));
            }
            Match::Number {
                prefix,
                value,
                lo,
                hi,
            } => {
                number_range(
                    q,
                    *prefix,
                    *value,
                    *lo,
                    *hi,
                    &format!("{t}.lo"),
                    &format!("{t}.hi"),
                );
            }
            Match::Quantity {
                prefix,
                value,
                lo,
                hi,
                canonical,
                system,
                code,
            } => {
                q.push("(");
                match canonical {
                    Some((cv, clo, chi, unit)) => {
                        q.push(&format!("{t}.canon_code = "))
                            .text(unit)
                            .push(" AND ");
                        number_range(
                            q,
                            *prefix,
                            *cv,
                            *clo,
                            *chi,
                            &format!("{t}.canon_lo"),
                            &format!("{t}.canon_hi"),
                        );
                    }
                    None => {
                        let cols = ["system", "code", "lo", "hi"].map(|c| format!("{t}.{c}"));
                        raw_quantity(q, system, code, (*prefix, *value, *lo, *hi), &cols);
                    }
                }
                q.push(")");
            }
            Match::Uri { value, how } => match how {
                UriMatch::Exact => {
                    q.push(&format!("{t}.value = ")).text(value);
                }
                UriMatch::Below => {
                    q.push(&format!("{t}.value LIKE "))
                        .text(&format!("{}%", like_escape(value)))
                        .push(" ESCAPE '\\'");
                }
                UriMatch::Above => {
                    // The stored URL is a prefix of the one searched.
                    q.text(value).push(&format!(" LIKE {t}.value || '%'"));
                }
            },
            Match::Composite {
                system1,
                code1,
                second,
            } => {
                q.push(&format!("({t}.code1 = ")).text(code1);
                if let Some(s) = system1 {
                    q.push(&format!(" AND {t}.system1 = ")).text(s);
                }
                q.push(" AND ");
                match second.as_ref() {
                    Match::Token { system, code } => {
                        q.push("(1 = 1");
                        if let Some(s) = system {
                            q.push(&format!(" AND {t}.system2 = ")).text(s);
                        }
                        if let Some(c) = code {
                            q.push(&format!(" AND {t}.code2 = ")).text(c);
                        }
                        q.push(")");
                    }
                    Match::String { value, .. } => {
                        q.push(&format!("{t}.text2 LIKE "))
                            .text(&format!("{}%", like_escape(value)))
                            .push(" ESCAPE '\\'");
                    }
                    Match::Quantity {
                        prefix,
                        value,
                        lo,
                        hi,
                        system,
                        code,
                        ..
                    } => {
                        let cols = ["system2", "code2", "lo2", "hi2"].map(|c| format!("{t}.{c}"));
                        raw_quantity(q, system, code, (*prefix, *value, *lo, *hi), &cols);
                    }
                    Match::Number {
                        prefix,
                        value,
                        lo,
                        hi,
                    } => {
                        number_range(
                            q,
                            *prefix,
                            *value,
                            *lo,
                            *hi,
                            &format!("{t}.lo2"),
                            &format!("{t}.hi2"),
                        );
                    }
                    Match::Date { prefix, lo, hi } => {
                        date_range(
                            q,
                            *prefix,
                            *lo,
                            *hi,
                            &format!("{t}.dlo2"),
                            &format!("{t}.dhi2"),
                        );
                    }
                    _ => {
                        q.push("1 = 0");
                    }
                }
                q.push(")");
            }
        }
    }

    /// The sort key of `key` for the row aliased `r`, never NULL (missing values sort last).
    pub fn sort_expr(&self, key: &SortKey, r: &str) -> Sql {
        let desc = key.descending;
        let agg = if desc { "MAX" } else { "MIN" };
        let mut q = Sql::new("COALESCE(");
        let (col, sentinel) = match (key.param.as_str(), key.kind) {
            ("_id", _) => (format!("{r}.res_id"), None),
            ("_lastUpdated", _) => (format!("{r}.last_updated"), None),
            (_, kind) => {
                let col = match kind {
                    ParamType::String => "norm",
                    ParamType::Token => "code",
                    ParamType::Reference => "target_id",
                    ParamType::Uri => "value",
                    _ if desc => "hi",
                    _ => "lo",
                };
                (String::new(), Some((table_of(kind), col)))
            }
        };
        match sentinel {
            None => {
                q.push(&col);
            }
            Some((table, c)) => {
                q.push(&format!(
                    "(SELECT {agg}(s.{c}) FROM {table} s WHERE s.rid = {r}.rid AND s.param = "
                ))
                .text(&key.param)
                .push(")");
            }
        }
        q.push(", ");
        match sort_kind(key) {
            SortKind::Text => q.text(if desc { "" } else { "\u{10FFFF}" }),
            SortKind::Int => q.int(if desc { i64::MIN } else { i64::MAX }),
            SortKind::Float => q.float(if desc { f64::MIN } else { f64::MAX }),
        };
        q.push(")");
        if sort_kind(key) == SortKind::Text {
            q.push(self.collate());
        }
        q
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKind {
    Text,
    Int,
    Float,
}

pub fn sort_kind(key: &SortKey) -> SortKind {
    match (key.param.as_str(), key.kind) {
        ("_id", _) => SortKind::Text,
        ("_lastUpdated", _) | (_, ParamType::Date) => SortKind::Int,
        (_, ParamType::Number | ParamType::Quantity) => SortKind::Float,
        _ => SortKind::Text,
    }
}

/// Date prefixes: the resource's range [lo, hi) against the searched range [a, b) (search.html).
fn date_range(q: &mut Sql, p: Prefix, a: i64, b: i64, lo: &str, hi: &str) {
    match p {
        Prefix::Eq => q
            .push(&format!("({lo} >= "))
            .int(a)
            .push(&format!(" AND {hi} <= "))
            .int(b)
            .push(")"),
        Prefix::Ne => q
            .push(&format!("({lo} < "))
            .int(a)
            .push(&format!(" OR {hi} > "))
            .int(b)
            .push(")"),
        Prefix::Gt => q.push(&format!("{hi} > ")).int(b),
        Prefix::Lt => q.push(&format!("{lo} < ")).int(a),
        Prefix::Ge => q
            .push(&format!("({hi} > "))
            .int(b)
            .push(&format!(" OR {lo} >= "))
            .int(a)
            .push(")"),
        Prefix::Le => q
            .push(&format!("({lo} < "))
            .int(a)
            .push(&format!(" OR {hi} <= "))
            .int(b)
            .push(")"),
        Prefix::Sa => q.push(&format!("{lo} >= ")).int(b),
        Prefix::Eb => q.push(&format!("{hi} <= ")).int(a),
        Prefix::Ap => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let gap = ((now - a).abs() / 10).max(86_400_000_000);
            q.push(&format!("({lo} < "))
                .int(b.saturating_add(gap))
                .push(&format!(" AND {hi} > "))
                .int(a.saturating_sub(gap))
                .push(")")
        }
    };
}

/// A quantity compared as written (no unit conversion): the optional system and code, then the
/// value. `cols` names the system, code, lo and hi columns.
fn raw_quantity(
    q: &mut Sql,
    system: &Option<String>,
    code: &Option<String>,
    (prefix, value, lo, hi): (Prefix, f64, f64, f64),
    cols: &[String; 4],
) {
    if let Some(s) = system {
        q.push(&format!("{} = ", cols[0])).text(s).push(" AND ");
    }
    if let Some(c) = code {
        q.push(&format!("{} = ", cols[1])).text(c).push(" AND ");
    }
    number_range(q, prefix, value, lo, hi, &cols[2], &cols[3]);
}

/// Number prefixes: the resource's value [lo, hi] against the searched value with its implicit
/// precision range [a, b).
fn number_range(q: &mut Sql, p: Prefix, v: f64, a: f64, b: f64, lo: &str, hi: &str) {
    match p {
        Prefix::Eq => q
            .push(&format!("({lo} >= "))
            .float(a)
            .push(&format!(" AND {hi} < "))
            .float(b)
            .push(")"),
        Prefix::Ne => q
            .push(&format!("({lo} < "))
            .float(a)
            .push(&format!(" OR {hi} >= "))
            .float(b)
            .push(")"),
        Prefix::Gt | Prefix::Sa => q.push(&format!("{hi} > ")).float(v),
        Prefix::Lt | Prefix::Eb => q.push(&format!("{lo} < ")).float(v),
        Prefix::Ge => q.push(&format!("{hi} >= ")).float(a),
        Prefix::Le => q.push(&format!("{lo} < ")).float(b),
        Prefix::Ap => {
            let d = (v.abs() * 0.1).max(b - a);
            q.push(&format!("({lo} <= "))
                .float(v + d)
                .push(&format!(" AND {hi} >= "))
                .float(v - d)
                .push(")")
        }
    };
}

#[derive(Debug, QueryableByName)]
pub struct Hit {
    #[diesel(sql_type = BigInt)]
    pub rid: i64,
    #[diesel(sql_type = Text)]
    pub res_type: String,
    #[diesel(sql_type = Text)]
    pub res_id: String,
}

#[derive(Debug, QueryableByName)]
pub struct ContentRow {
    #[diesel(sql_type = BigInt)]
    pub rid: i64,
    #[diesel(sql_type = Text)]
    pub content: String,
}

#[derive(Debug, QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(Debug, QueryableByName)]
struct TextVal {
    #[diesel(sql_type = Text)]
    v: String,
}

#[derive(Debug, QueryableByName)]
struct IntVal {
    #[diesel(sql_type = BigInt)]
    v: i64,
}

#[derive(Debug, QueryableByName)]
struct FloatVal {
    #[diesel(sql_type = Double)]
    v: f64,
}

/// A sort key's value at a page boundary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum KeyValue {
    Int(i64),
    Float(f64),
    Text(String),
}

pub fn load_hits(conn: &mut DbConn, q: Sql) -> FhirResult<Vec<Hit>> {
    Ok(q.load(conn)?)
}

pub fn count(conn: &mut DbConn, q: Sql) -> FhirResult<i64> {
    let rows: Vec<CountRow> = q.load(conn)?;
    Ok(rows.first().map_or(0, |r| r.n))
}

/// The current content of resources, by row id.
pub fn contents(conn: &mut DbConn, rids: &[i64]) -> FhirResult<Vec<ContentRow>> {
    if rids.is_empty() {
        return Ok(vec![]);
    }
    let mut q = Sql::new(
        "SELECT r.rid AS rid, h.content AS content FROM resources r JOIN resource_history h \
         ON h.res_type = r.res_type AND h.res_id = r.res_id AND h.version = r.version \
         WHERE r.deleted = 0 AND r.rid IN ",
    );
    q.int_list(rids);
    Ok(q.load(conn)?)
}

/// The values of the sort keys of row `rid`.
pub fn key_values(
    conn: &mut DbConn,
    planner: &Planner,
    keys: &[SortKey],
    rid: i64,
) -> FhirResult<Vec<KeyValue>> {
    let mut out = Vec::new();
    for key in keys {
        let mut q = Sql::new("SELECT ");
        q.append(planner.sort_expr(key, "r"));
        q.push(" AS v FROM resources r WHERE r.rid = ").int(rid);
        let v = match sort_kind(key) {
            SortKind::Text => {
                let rows: Vec<TextVal> = q.load(conn)?;
                KeyValue::Text(rows.into_iter().next().map(|r| r.v).unwrap_or_default())
            }
            SortKind::Int => {
                let rows: Vec<IntVal> = q.load(conn)?;
                KeyValue::Int(rows.first().map_or(0, |r| r.v))
            }
            SortKind::Float => {
                let rows: Vec<FloatVal> = q.load(conn)?;
                KeyValue::Float(rows.first().map_or(0.0, |r| r.v))
            }
        };
        out.push(v);
    }
    Ok(out)
}

/// Pairs `(target_type, target_id)` that `param` of the resources `rids` references.
#[derive(Debug, QueryableByName)]
pub struct RefRow {
    #[diesel(sql_type = Text)]
    pub target_type: String,
    #[diesel(sql_type = Text)]
    pub target_id: String,
}

pub fn references_from(
    conn: &mut DbConn,
    rids: &[i64],
    param: Option<&str>,
    target_type: Option<&str>,
) -> FhirResult<Vec<RefRow>> {
    if rids.is_empty() {
        return Ok(vec![]);
    }
    let mut q = Sql::new("SELECT DISTINCT target_type, target_id FROM idx_reference WHERE target_id <> '' AND rid IN ");
    q.int_list(rids);
    if let Some(p) = param {
        q.push(" AND param = ").text(p);
    }
    if let Some(t) = target_type {
        q.push(" AND target_type = ").text(t);
    }
    Ok(q.load(conn)?)
}

/// Live resources by (type, ids).
pub fn hits_by_ids(conn: &mut DbConn, res_type: &str, ids: &[String]) -> FhirResult<Vec<Hit>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut q =
        Sql::new("SELECT rid, res_type, res_id FROM resources WHERE deleted = 0 AND res_type = ");
    q.text(res_type).push(" AND res_id IN ");
    q.text_list(ids);
    Ok(q.load(conn)?)
}

/// Live resources by (type, ids), share-locked on PostgreSQL until the transaction ends: a write
/// that refers to them keeps them from being deleted under it (a delete locks the same rows).
pub fn live_locked(conn: &mut DbConn, res_type: &str, ids: &[String]) -> FhirResult<Vec<Hit>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut q =
        Sql::new("SELECT rid, res_type, res_id FROM resources WHERE deleted = 0 AND res_type = ");
    q.text(res_type).push(" AND res_id IN ");
    q.text_list(ids);
    if let DbConn::Postgres(_) = conn {
        q.push(" FOR SHARE");
    }
    Ok(q.load(conn)?)
}

/// Live resources of `source_type` whose `param` (any reference parameter if None) points to one of
/// `targets` (all of `target_type`).
pub fn referencing(
    conn: &mut DbConn,
    source_type: &str,
    param: Option<&str>,
    target_type: &str,
    target_ids: &[String],
) -> FhirResult<Vec<Hit>> {
    if target_ids.is_empty() {
        return Ok(vec![]);
    }
    let mut q = Sql::new(
        "SELECT DISTINCT r.rid AS rid, r.res_type AS res_type, r.res_id AS res_id FROM idx_reference t \
         JOIN resources r ON r.rid = t.rid WHERE r.deleted = 0 AND r.res_type = ",
    );
    q.text(source_type);
    if let Some(p) = param {
        q.push(" AND t.param = ").text(p);
    }
    q.push(" AND t.target_type = ")
        .text(target_type)
        .push(" AND t.target_id IN ");
    q.text_list(target_ids);
    Ok(q.load(conn)?)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// "n": the page after the boundary row; "p": the page before it.
    pub d: String,
    pub r: i64,
    pub k: Vec<KeyValue>,
}

/// One page of search results, with the boundaries of its neighbours.
pub struct Page {
    pub matches: Vec<Hit>,
    pub included: Vec<Hit>,
    pub contents: HashMap<i64, String>,
    pub total: Option<i64>,
    pub next: Option<Cursor>,
    pub prev: Option<Cursor>,
}

/// The WHERE clause shared by the page query and the count.
fn filter(planner: &mut Planner, q: &SearchQuery) -> Sql {
    // A restricted view of one type through one grant (a patient's compartment, say) is just more
    // conditions, so the compartment can drive the query; anything else is one extra predicate.
    let mut conditions = q.conditions.clone();
    let mut predicate = None;
    if let Some(vis) = &q.visible {
        match (
            q.types.as_slice(),
            q.types.first().and_then(|t| vis.types.get(t)),
        ) {
            ([_], Some(alts)) if alts.len() == 1 => conditions.extend(alts[0].iter().cloned()),
            _ => predicate = Some(vis),
        }
    }
    let driver = Planner::driver(&conditions);
    // With a driving condition, SQLite must not use the type test as an index (an expression is
    // not one), or its planner scans every resource of the type; PostgreSQL's planner costs both
    // ways from statistics and does best with the plain test.
    let hide_type = driver.is_some() && planner.backend == Backend::Sqlite;
    let mut sql = Sql::new(if hide_type {
        " FROM resources r WHERE r.deleted = 0 AND (r.res_type || '') IN "
    } else {
        " FROM resources r WHERE r.deleted = 0 AND r.res_type IN "
    });
    sql.text_list(&q.types);
    for (i, c) in conditions.iter().enumerate() {
        sql.push(" AND ");
        if Some(i) == driver {
            planner.driving_condition(&mut sql, c, "r");
        } else {
            planner.condition(&mut sql, c, "r");
        }
    }
    if let Some(vis) = predicate {
        sql.push(" AND ");
        planner.visibility(&mut sql, vis, &q.types, "r");
    }
    sql
}

/// Runs a search: the page of matches after (or before) `cursor`, its includes and contents, and
/// the total when asked.
pub fn run(
    conn: &mut DbConn,
    backend: Backend,
    q: &SearchQuery,
    cursor: Option<&Cursor>,
) -> FhirResult<Page> {
    let mut planner = Planner::with_visibility(backend, q.visible.as_ref());
    let where_ = filter(&mut planner, q);
    if let Some(c) = cursor {
        // A cursor comes back from the client: its keys must fit this query's sort exactly.
        let fits = c.k.len() == q.sort.len()
            && c.k.iter().zip(&q.sort).all(|(v, key)| {
                matches!(
                    (v, sort_kind(key)),
                    (KeyValue::Int(_), SortKind::Int)
                        | (KeyValue::Float(_), SortKind::Float)
                        | (KeyValue::Text(_), SortKind::Text)
                )
            });
        if !fits {
            return Err(FhirError::invalid(
                "this paging link does not belong to this search",
                "_cursor",
            ));
        }
    }
    // `_count=0` asks for the total alone (search.html#count).
    let wants_total = matches!(q.total, Total::Accurate | Total::Estimate)
        || q.summary == Summary::Count
        || q.count == 0;
    let mut total = None;
    if wants_total {
        let mut c = Sql::new("SELECT COUNT(*) AS n");
        c.append(where_.clone());
        total = Some(count(conn, c)?);
    }
    let mut page = Page {
        matches: vec![],
        included: vec![],
        contents: HashMap::new(),
        total,
        next: None,
        prev: None,
    };
    if q.summary == Summary::Count || q.count == 0 {
        return Ok(page);
    }
    let backwards = cursor.is_some_and(|c| c.d == "p");
    let sql = page_sql(&mut planner, q, where_, cursor, backwards);
    let mut hits = load_hits(conn, sql)?;
    let more = hits.len() as i64 > q.count;
    hits.truncate(q.count as usize);
    if backwards {
        hits.reverse();
    }
    let boundary = |conn: &mut DbConn, hit: &Hit, d: &str| -> FhirResult<Cursor> {
        Ok(Cursor {
            d: d.into(),
            r: hit.rid,
            k: key_values(conn, &planner, &q.sort, hit.rid)?,
        })
    };
    let (has_next, has_prev) = if backwards {
        (true, more)
    } else {
        (more, cursor.is_some())
    };
    if let (true, Some(last)) = (has_next, hits.last()) {
        page.next = Some(boundary(conn, last, "n")?);
    }
    if let (true, Some(first)) = (has_prev, hits.first()) {
        page.prev = Some(boundary(conn, first, "p")?);
    }
    if page.total.is_none() && cursor.is_none() && !more {
        page.total = Some(hits.len() as i64);
    }
    page.included = includes(conn, backend, q, &hits)?;
    let rids: Vec<i64> = hits.iter().chain(&page.included).map(|h| h.rid).collect();
    page.contents = contents(conn, &rids)?
        .into_iter()
        .map(|c| (c.rid, c.content))
        .collect();
    page.matches = hits;
    Ok(page)
}

/// The statement selecting one page of matches.
fn page_sql(
    planner: &mut Planner,
    q: &SearchQuery,
    where_: Sql,
    cursor: Option<&Cursor>,
    backwards: bool,
) -> Sql {
    let keys: Vec<Sql> = q.sort.iter().map(|k| planner.sort_expr(k, "r")).collect();
    let mut sql = Sql::new("SELECT r.rid AS rid, r.res_type AS res_type, r.res_id AS res_id");
    sql.append(where_);
    if let Some(c) = cursor {
        sql.push(" AND ");
        keyset(&mut sql, q, &keys, c, backwards);
    }
    sql.push(" ORDER BY ");
    for (i, (k, key)) in keys.iter().zip(&q.sort).enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.append(k.clone());
        sql.push(if key.descending != backwards {
            " DESC"
        } else {
            " ASC"
        });
    }
    if !keys.is_empty() {
        sql.push(", ");
    }
    sql.push(if backwards {
        "r.rid DESC LIMIT "
    } else {
        "r.rid ASC LIMIT "
    });
    sql.int(q.count + 1);
    sql
}

#[derive(Debug, QueryableByName)]
struct SqlitePlanRow {
    #[diesel(sql_type = Text)]
    detail: String,
}

#[derive(Debug, QueryableByName)]
struct PgPlanRow {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    plan: String,
}

/// The database's plan for the first page of `q` (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
/// PostgreSQL), one line per step.
pub fn explain(conn: &mut DbConn, backend: Backend, q: &SearchQuery) -> FhirResult<Vec<String>> {
    let mut planner = Planner::with_visibility(backend, q.visible.as_ref());
    let where_ = filter(&mut planner, q);
    let page = page_sql(&mut planner, q, where_, None, false);
    let mut sql = Sql::new(match backend {
        Backend::Sqlite => "EXPLAIN QUERY PLAN ",
        Backend::Postgres => "EXPLAIN ",
    });
    sql.append(page);
    Ok(match backend {
        Backend::Sqlite => sql
            .load::<SqlitePlanRow>(conn)?
            .into_iter()
            .map(|r| r.detail)
            .collect(),
        Backend::Postgres => sql
            .load::<PgPlanRow>(conn)?
            .into_iter()
            .map(|r| r.plan)
            .collect(),
    })
}

/// `(k1, k2, …, rid)` after (or before) the cursor's values, each key in its own direction.
fn keyset(sql: &mut Sql, q: &SearchQuery, keys: &[Sql], c: &Cursor, backwards: bool) {
    let cmp = |desc: bool| if desc != backwards { " < " } else { " > " };
    let value = |sql: &mut Sql, v: &KeyValue| {
        match v {
            KeyValue::Int(i) => sql.int(*i),
            KeyValue::Float(f) => sql.float(*f),
            KeyValue::Text(s) => sql.text(s),
        };
    };
    let pairs: Vec<_> = keys.iter().zip(&q.sort).zip(&c.k).collect();
    sql.push("(");
    for ((key, sort), v) in &pairs {
        sql.append((*key).clone());
        sql.push(cmp(sort.descending));
        value(sql, v);
        sql.push(" OR (");
        sql.append((*key).clone());
        sql.push(" = ");
        value(sql, v);
        sql.push(" AND ");
    }
    sql.push("r.rid").push(cmp(false)).int(c.r);
    for _ in &pairs {
        sql.push(")");
    }
    sql.push(")");
}

fn includes(
    conn: &mut DbConn,
    backend: Backend,
    q: &SearchQuery,
    matches: &[Hit],
) -> FhirResult<Vec<Hit>> {
    if q.includes.is_empty() && q.revincludes.is_empty() {
        return Ok(vec![]);
    }
    let mut seen: HashSet<i64> = matches.iter().map(|h| h.rid).collect();
    let mut frontier: Vec<Hit> = matches.iter().map(clone_hit).collect();
    let mut out: Vec<Hit> = Vec::new();
    for round in 0..=MAX_ITERATE {
        let applies = |inc: &&Include| round == 0 || inc.iterate;
        let mut found: Vec<Hit> = Vec::new();
        for inc in q.includes.iter().filter(applies) {
            let sources: Vec<i64> = frontier
                .iter()
                .filter(|h| inc.source_type == "*" || h.res_type == inc.source_type)
                .map(|h| h.rid)
                .collect();
            let refs = references_from(
                conn,
                &sources,
                inc.param.as_deref(),
                inc.target_type.as_deref(),
            )?;
            let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
            for r in refs
                .into_iter()
                .filter(|r| fhir::is_enabled(&r.target_type))
            {
                by_type.entry(r.target_type).or_default().push(r.target_id);
            }
            for (t, ids) in by_type {
                found.extend(hits_by_ids(conn, &t, &ids)?);
            }
        }
        for inc in q
            .revincludes
            .iter()
            .filter(applies)
            .filter(|i| i.source_type != "*")
        {
            let mut by_type: HashMap<&str, Vec<String>> = HashMap::new();
            for h in &frontier {
                by_type
                    .entry(&h.res_type)
                    .or_default()
                    .push(h.res_id.clone());
            }
            for (t, ids) in by_type {
                found.extend(referencing(
                    conn,
                    &inc.source_type,
                    inc.param.as_deref(),
                    t,
                    &ids,
                )?);
            }
        }
        let mut fresh: Vec<Hit> = found.into_iter().filter(|h| seen.insert(h.rid)).collect();
        if let Some(vis) = &q.readable {
            fresh = visible_only(conn, backend, vis, fresh)?;
        }
        if fresh.is_empty() || out.len() >= MAX_INCLUDES {
            break;
        }
        frontier = fresh.iter().map(clone_hit).collect();
        out.extend(fresh);
    }
    out.truncate(MAX_INCLUDES);
    Ok(out)
}

/// The hits the caller may see under `vis`, in their order.
fn visible_only(
    conn: &mut DbConn,
    backend: Backend,
    vis: &Visibility,
    hits: Vec<Hit>,
) -> FhirResult<Vec<Hit>> {
    if hits.is_empty() {
        return Ok(hits);
    }
    let mut types: Vec<String> = hits.iter().map(|h| h.res_type.clone()).collect();
    types.sort();
    types.dedup();
    let rids: Vec<i64> = hits.iter().map(|h| h.rid).collect();
    let mut ok: HashSet<i64> = HashSet::new();
    // In chunks: both backends cap the bound parameters of one statement.
    for chunk in rids.chunks(500) {
        let mut q = Sql::new("SELECT r.rid AS rid FROM resources r WHERE r.rid IN ");
        q.int_list(chunk).push(" AND ");
        Planner::new(backend).visibility(&mut q, vis, &types, "r");
        ok.extend(q.load::<RidRow>(conn)?.into_iter().map(|r| r.rid));
    }
    Ok(hits.into_iter().filter(|h| ok.contains(&h.rid)).collect())
}

#[derive(Debug, QueryableByName)]
struct RidRow {
    #[diesel(sql_type = BigInt)]
    rid: i64,
}

fn clone_hit(h: &Hit) -> Hit {
    Hit {
        rid: h.rid,
        res_type: h.res_type.clone(),
        res_id: h.res_id.clone(),
    }
}

/// A batch of live resources after row id `after`, for reindexing: (rid, content).
pub fn live_after(conn: &mut DbConn, after: i64, limit: i64) -> FhirResult<Vec<ContentRow>> {
    let mut q = Sql::new(
        "SELECT r.rid AS rid, h.content AS content FROM resources r JOIN resource_history h \
         ON h.res_type = r.res_type AND h.res_id = r.res_id AND h.version = r.version \
         WHERE r.deleted = 0 AND r.rid > ",
    );
    q.int(after).push(" ORDER BY r.rid LIMIT ").int(limit);
    Ok(q.load(conn)?)
}

/// Live resources (of any type a client writes) whose indexed references point to `ty/id`, at most
/// `limit` of them.
pub fn referrers(conn: &mut DbConn, ty: &str, id: &str, limit: usize) -> FhirResult<Vec<Hit>> {
    let mut q = Sql::new(
        "SELECT DISTINCT r.rid AS rid, r.res_type AS res_type, r.res_id AS res_id FROM idx_reference t \
         JOIN resources r ON r.rid = t.rid WHERE r.deleted = 0 AND t.target_type = ",
    );
    q.text(ty).push(" AND t.target_id = ").text(id);
    q.push(" AND r.res_type NOT IN ");
    let skip: Vec<String> = crate::fhir::SERVER_WRITTEN
        .iter()
        .map(|t| t.to_string())
        .collect();
    q.text_list(&skip);
    q.push(" ORDER BY r.rid LIMIT ").int(limit as i64);
    Ok(q.load(conn)?)
}
