//! Parsing a search request (spec search.html) into a backend-neutral plan: conditions ANDed
//! together, each an OR of value matches on one parameter, plus chains, `_has`, and the result
//! controls. `store` turns the plan into SQL.

use std::sync::Arc;

use super::index::{normalize, ucum_canonical, UCUM};
use super::params::{registry, ParamType, SearchParam};
use crate::error::{FhirError, FhirResult};
use crate::fhir::{parse_instant_range, valid_id};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    Prefix,
    Exact,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    String {
        value: String,
        how: StringMatch,
    },
    /// `system`: None = any system; Some("") = no system. `code`: None = any code.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    TokenText(String),
    OfType {
        type_system: String,
        type_code: String,
        value: String,
    },
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    RefIdentifier {
        system: Option<String>,
        value: Option<String>,
    },
    Date {
        prefix: Prefix,
        lo: i64,
        hi: i64,
    },
    Number {
        prefix: Prefix,
        value: f64,
        lo: f64,
        hi: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        lo: f64,
        hi: f64,
        /// Compare on the canonical UCUM unit (value, lo, hi, unit) when the search names one.
        canonical: Option<(f64, f64, f64, String)>,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        value: String,
        how: UriMatch,
    },
    Composite {
        system1: Option<String>,
        code1: String,
        second: Box<Match>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    Below,
    Above,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Some index row of `param` matches one of `any` (or, negated, none does).
    Param {
        param: String,
        kind: ParamType,
        any: Vec<Match>,
        negate: bool,
    },
    /// The parameter has no value (`missing == true`) or has one.
    Missing {
        param: String,
        kind: ParamType,
        missing: bool,
    },
    Id(Vec<String>),
    LastUpdated(Vec<Match>),
    /// A reference of `param` points to a resource (of `target_types`) meeting `inner`.
    Chain {
        param: String,
        target_types: Vec<String>,
        inner: Box<Condition>,
    },
    /// A resource of `source_type` whose `param` points here meets `inner`.
    Has {
        source_type: String,
        param: String,
        inner: Box<Condition>,
    },
    /// In the compartment of `comp_type/id`: that resource itself, or one whose `params` point to it.
    Compartment {
        comp_type: String,
        id: String,
        params: Vec<String>,
    },
}

/// The keys of `_sort`.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub param: String,
    pub kind: ParamType,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

/// `_include` / `_revinclude`: `source_type:param[:target_type]`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub types: Vec<String>,
    pub conditions: Vec<Condition>,
    pub sort: Vec<SortKey>,
    pub count: i64,
    pub total: Total,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// The page position from a next/previous link.
    pub cursor: Option<String>,
    /// The parameters understood, as they go into self/next/previous links.
    pub link_params: Vec<(String, String)>,
    /// What the caller may find (search permission): applies to matches, chains and `_has`.
    /// None: everything.
    pub visible: Option<Visibility>,
    /// What the caller may read (read permission): applies to `_include`/`_revinclude`.
    pub readable: Option<Visibility>,
}

/// Row-level access from the caller's scopes. Each type maps to alternatives (ORed), each a list of
/// conditions (ANDed; an empty list is the whole type). Types absent from the map are invisible.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Visibility {
    pub types: std::collections::HashMap<String, Vec<Vec<Condition>>>,
}

/// Settings of the parse: page sizes, and whether unknown parameters are errors.
pub struct ParseOptions<'a> {
    pub default_count: i64,
    pub max_count: i64,
    pub strict: bool,
    pub base_url: &'a str,
}

pub const CURSOR: &str = "_cursor";

/// Alternatives one parameter may OR together, and filters one search may AND (each becomes bound
/// SQL parameters; both backends cap how many a statement may have).
const MAX_ALTERNATIVES: usize = 200;
const MAX_FILTERS: usize = 50;

fn bad(name: &str, why: impl std::fmt::Display) -> FhirError {
    FhirError::invalid(
        format!("search parameter '{name}': {why}"),
        name.to_string(),
    )
}

/// Splits on unescaped `sep`, removing the escapes of `\,`, `\|`, `\$` and `\\`.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some(&n) if n == sep => {
                    out.last_mut().unwrap().push(n);
                    chars.next();
                }
                Some(&n) if matches!(n, ',' | '|' | '$' | '\\') => {
                    // Another separator: keep the escape for the next split level.
                    out.last_mut().unwrap().push('\\');
                    out.last_mut().unwrap().push(n);
                    chars.next();
                }
                _ => out.last_mut().unwrap().push(c),
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && chars
                .peek()
                .is_some_and(|n| matches!(n, ',' | '|' | '$' | '\\'))
        {
            out.push(chars.next().unwrap());
        } else {
            out.push(c);
        }
    }
    out
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// A decimal with its implicit precision: `25` is [24.5, 25.5), `25.30` is [25.295, 25.305).
fn parse_number(s: &str) -> Option<(f64, f64, f64)> {
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() || s.starts_with('+') || s.contains(['x', 'X', 'i', 'I', 'n', 'N']) {
        return None;
    }
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let half = 0.5 * 10f64.powi(exp - decimals);
    Some((v, v - half, v + half))
}

fn parse_token(v: &str) -> Match {
    let parts = split_escaped(v, '|');
    match parts.as_slice() {
        [code] => Match::Token {
            system: None,
            code: Some(unescape(code)),
        },
        [system, code] => Match::Token {
            system: Some(unescape(system)),
            code: (!code.is_empty()).then(|| unescape(code)),
        },
        _ => Match::Token {
            system: None,
            code: Some(unescape(v)),
        },
    }
}

fn parse_date(name: &str, v: &str) -> FhirResult<Match> {
    let (prefix, rest) = split_prefix(v);
    let r =
        parse_instant_range(rest).ok_or_else(|| bad(name, format!("'{v}' is not a FHIR date")))?;
    Ok(Match::Date {
        prefix,
        lo: r.start,
        hi: r.end,
    })
}

fn parse_quantity(name: &str, v: &str) -> FhirResult<Match> {
    let (prefix, rest) = split_prefix(v);
    let parts = split_escaped(rest, '|');
    let (value, lo, hi) = parse_number(&parts[0]).ok_or_else(|| {
        bad(
            name,
            format!("'{v}' is not a quantity (number|system|code)"),
        )
    })?;
    let system = parts.get(1).filter(|s| !s.is_empty()).map(|s| unescape(s));
    let code = parts.get(2).filter(|s| !s.is_empty()).map(|s| unescape(s));
    if parts.len() > 3 {
        return Err(bad(
            name,
            format!("'{v}' is not a quantity (number|system|code)"),
        ));
    }
    let canonical = match (&system, &code) {
        (Some(s), Some(c)) if s == UCUM => (|| {
            let (cv, unit) = ucum_canonical(value, c)?;
            let (clo, _) = ucum_canonical(lo, c)?;
            let (chi, _) = ucum_canonical(hi, c)?;
            Some((cv, clo, chi, unit))
        })(),
        _ => None,
    };
    Ok(Match::Quantity {
        prefix,
        value,
        lo,
        hi,
        canonical,
        system,
        code,
    })
}

fn parse_reference(
    v: &str,
    targets: &[String],
    type_modifier: Option<&str>,
    base_url: &str,
) -> Match {
    let v = v
        .strip_prefix(base_url)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(v);
    if v.contains("://") || v.starts_with("urn:") {
        return Match::Reference {
            target_type: None,
            target_id: None,
            url: Some(v.to_string()),
        };
    }
    let segs: Vec<&str> = v.split('/').collect();
    match segs.as_slice() {
        [t, id, ..] if t.starts_with(|c: char| c.is_ascii_uppercase()) => Match::Reference {
            target_type: Some(t.to_string()),
            target_id: Some(id.to_string()),
            url: None,
        },
        _ => Match::Reference {
            target_type: type_modifier
                .map(str::to_string)
                .or_else(|| (targets.len() == 1).then(|| targets[0].clone())),
            target_id: Some(v.to_string()),
            url: None,
        },
    }
}

/// Parses one value (an OR alternative) of a parameter.
fn parse_value(
    name: &str,
    p: &SearchParam,
    modifier: Option<&str>,
    v: &str,
    base_url: &str,
) -> FhirResult<Match> {
    Ok(match p.kind {
        ParamType::String => Match::String {
            value: match modifier {
                Some("exact") => unescape(v),
                _ => normalize(&unescape(v)),
            },
            how: match modifier {
                None => StringMatch::Prefix,
                Some("exact") => StringMatch::Exact,
                Some("contains") => StringMatch::Contains,
                Some(m) => {
                    return Err(bad(
                        name,
                        format!("modifier ':{m}' does not apply to strings"),
                    ))
                }
            },
        },
        ParamType::Token => match modifier {
            Some("text") => Match::TokenText(normalize(&unescape(v))),
            Some("of-type") => {
                let parts = split_escaped(v, '|');
                let [ts, tc, value] = parts.as_slice() else {
                    return Err(bad(name, "':of-type' takes type-system|type-code|value"));
                };
                Match::OfType {
                    type_system: unescape(ts),
                    type_code: unescape(tc),
                    value: unescape(value),
                }
            }
            None | Some("not") => parse_token(v),
            Some(m @ ("in" | "not-in")) => {
                return Err(bad(
                    name,
                    format!("':{m}' needs a value set this server knows; '{v}' is not one"),
                ))
            }
            Some(m) => {
                return Err(bad(
                    name,
                    format!("modifier ':{m}' does not apply to tokens"),
                ))
            }
        },
        ParamType::Reference => match modifier {
            Some("identifier") => match parse_token(v) {
                Match::Token { system, code } => Match::RefIdentifier {
                    system,
                    value: code,
                },
                other => other,
            },
            Some(t) if t.starts_with(|c: char| c.is_ascii_uppercase()) => {
                parse_reference(v, &p.targets, Some(t), base_url)
            }
            None => parse_reference(v, &p.targets, None, base_url),
            Some(m) => {
                return Err(bad(
                    name,
                    format!("modifier ':{m}' does not apply to references"),
                ))
            }
        },
        ParamType::Date => {
            no_modifier(name, modifier)?;
            parse_date(name, v)?
        }
        ParamType::Number => {
            no_modifier(name, modifier)?;
            let (prefix, rest) = split_prefix(v);
            let (value, lo, hi) =
                parse_number(rest).ok_or_else(|| bad(name, format!("'{v}' is not a number")))?;
            Match::Number {
                prefix,
                value,
                lo,
                hi,
            }
        }
        ParamType::Quantity => {
            no_modifier(name, modifier)?;
            parse_quantity(name, v)?
        }
        ParamType::Uri => Match::Uri {
            value: unescape(v),
            how: match modifier {
                None => UriMatch::Exact,
                Some("below") => UriMatch::Below,
                Some("above") => UriMatch::Above,
                Some(m) => {
                    return Err(bad(name, format!("modifier ':{m}' does not apply to uris")))
                }
            },
        },
        ParamType::Composite => {
            no_modifier(name, modifier)?;
            let parts = split_escaped(v, '$');
            let ([first, second], [_, c2]) = (parts.as_slice(), p.components.as_slice()) else {
                return Err(bad(name, "a composite value has two parts joined by '$'"));
            };
            let Match::Token {
                system,
                code: Some(code1),
            } = parse_token(first)
            else {
                return Err(bad(
                    name,
                    "the first part of a composite value needs a code",
                ));
            };
            let second_param = registry()
                .by_url(&c2.definition)
                .ok_or_else(|| bad(name, "unknown composite component"))?;
            let second = parse_value(name, second_param, None, second, base_url)?;
            Match::Composite {
                system1: system,
                code1,
                second: Box::new(second),
            }
        }
        ParamType::Special => return Err(bad(name, "this special parameter is not supported")),
    })
}

fn no_modifier(name: &str, modifier: Option<&str>) -> FhirResult<()> {
    match modifier {
        None => Ok(()),
        Some(m) => Err(bad(name, format!("modifier ':{m}' is not supported here"))),
    }
}

/// Whether a name is a result parameter (not a filter).
fn is_control(name: &str) -> bool {
    matches!(
        name,
        "_sort"
            | "_count"
            | "_total"
            | "_summary"
            | "_elements"
            | "_include"
            | "_revinclude"
            | "_include:iterate"
            | "_revinclude:iterate"
            | "_format"
            | "_pretty"
            | "_type"
            | CURSOR
            | "_contained"
            | "_containedType"
    )
}

/// Outcome of parsing one filter parameter: a condition, or "not known here" (lenient skip).
enum Parsed {
    Condition(Condition),
    Unknown(String),
}

fn find_param<'r>(types: &[String], code: &str) -> Option<&'r Arc<SearchParam>> {
    types.iter().find_map(|t| registry().get(t, code))
}

/// Parses `name=value` against `types` (several for a system search or an untyped chain).
fn parse_filter(types: &[String], name: &str, value: &str, base_url: &str) -> FhirResult<Parsed> {
    // Reverse chaining: _has:Type:param:rest
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner_name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                name,
                "_has takes _has:Type:reference-parameter:parameter",
            ));
        };
        let source_types = vec![source.to_string()];
        if !crate::fhir::is_enabled(source)
            || registry()
                .get(source, param)
                .is_none_or(|p| p.kind != ParamType::Reference)
        {
            return Ok(Parsed::Unknown(name.into()));
        }
        return Ok(
            match parse_filter(&source_types, inner_name, value, base_url)? {
                Parsed::Condition(inner) => Parsed::Condition(Condition::Has {
                    source_type: source.into(),
                    param: param.into(),
                    inner: Box::new(inner),
                }),
                unknown => unknown,
            },
        );
    }
    // Chaining: param[:Type].rest
    if let Some((head, rest)) = name.split_once('.') {
        let (code, type_mod) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let Some(p) = find_param(types, code).filter(|p| p.kind == ParamType::Reference) else {
            return Ok(Parsed::Unknown(name.into()));
        };
        let targets: Vec<String> = match type_mod {
            Some(t) => vec![t.to_string()],
            None => p
                .targets
                .iter()
                .filter(|t| crate::fhir::is_enabled(t))
                .cloned()
                .collect(),
        };
        let known: Vec<String> = targets
            .into_iter()
            .filter(|t| crate::fhir::is_enabled(t))
            .collect();
        if known.is_empty() {
            return Ok(Parsed::Unknown(name.into()));
        }
        return Ok(match parse_filter(&known, rest, value, base_url)? {
            Parsed::Condition(inner) => Parsed::Condition(Condition::Chain {
                param: code.into(),
                target_types: known,
                inner: Box::new(inner),
            }),
            unknown => unknown,
        });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let alternatives = split_escaped(value, ',');
    if alternatives.len() > MAX_ALTERNATIVES {
        return Err(bad(
            name,
            format!("more than {MAX_ALTERNATIVES} comma-separated values"),
        ));
    }
    if code == "_id" {
        if modifier.is_some() {
            return Err(bad(name, "no modifier applies to _id"));
        }
        return Ok(Parsed::Condition(Condition::Id(
            alternatives
                .iter()
                .map(|a| unescape(a))
                .filter(|a| valid_id(a))
                .collect(),
        )));
    }
    if code == "_lastUpdated" {
        no_modifier(name, modifier)?;
        let any = alternatives
            .iter()
            .map(|a| parse_date(name, a))
            .collect::<FhirResult<_>>()?;
        return Ok(Parsed::Condition(Condition::LastUpdated(any)));
    }
    let Some(p) = find_param(types, code).filter(|p| p.indexed()) else {
        return Ok(Parsed::Unknown(name.into()));
    };
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad(name, "':missing' takes true or false")),
        };
        return Ok(Parsed::Condition(Condition::Missing {
            param: code.into(),
            kind: p.kind,
            missing,
        }));
    }
    if let (ParamType::Token, Some(m @ ("in" | "not-in"))) = (p.kind, modifier) {
        // Each code of the value set, with its system or without one (a `code` element's implicit
        // system is not stored).
        let mut any = Vec::new();
        for alt in &alternatives {
            let url = unescape(alt);
            let codes = super::value_set(&url).ok_or_else(|| {
                bad(
                    name,
                    format!("':{m}' needs a value set this server knows; '{url}' is not one"),
                )
            })?;
            for (system, list) in codes {
                for code in list {
                    for s in [system.clone(), String::new()] {
                        any.push(Match::Token {
                            system: Some(s),
                            code: Some(code.clone()),
                        });
                    }
                }
            }
        }
        return Ok(Parsed::Condition(Condition::Param {
            param: code.into(),
            kind: p.kind,
            any,
            negate: m == "not-in",
        }));
    }
    let negate = modifier == Some("not") && p.kind == ParamType::Token;
    let mut any = Vec::new();
    for alt in &alternatives {
        if alt.is_empty() {
            return Err(bad(name, "an empty value"));
        }
        let m = parse_value(name, p, modifier, alt, base_url)?;
        // `ne` is the negation of `eq` over the whole element.
        any.push(m);
    }
    Ok(Parsed::Condition(Condition::Param {
        param: code.into(),
        kind: p.kind,
        any,
        negate,
    }))
}

fn parse_include(
    name: &str,
    value: &str,
    types: &[String],
    rev: bool,
) -> FhirResult<Option<Include>> {
    let iterate = name.ends_with(":iterate");
    if value == "*" {
        return Ok(Some(Include {
            source_type: "*".into(),
            param: None,
            target_type: None,
            iterate,
        }));
    }
    let parts: Vec<&str> = value.split(':').collect();
    let (source, param, target) = match parts.as_slice() {
        [s, p] => (*s, *p, None),
        [s, p, t] => (*s, *p, Some(t.to_string())),
        _ => {
            return Err(bad(
                name,
                format!("'{value}' is not Type:parameter[:targetType]"),
            ))
        }
    };
    if !crate::fhir::is_enabled(source) {
        return Ok(None);
    }
    if param == "*" {
        return Ok(Some(Include {
            source_type: source.into(),
            param: None,
            target_type: target,
            iterate,
        }));
    }
    match registry().get(source, param) {
        Some(p) if p.kind == ParamType::Reference => {}
        _ => {
            return Err(bad(
                name,
                format!("'{value}' is not a reference parameter of {source}"),
            ))
        }
    }
    if !rev && !iterate && !types.iter().any(|t| t == source) {
        return Err(bad(
            name,
            format!("'{value}' does not start from the searched type"),
        ));
    }
    Ok(Some(Include {
        source_type: source.into(),
        param: Some(param.into()),
        target_type: target,
        iterate,
    }))
}

/// Parses the query of a search on `types`.
pub fn parse(
    types: Vec<String>,
    params: &[(String, String)],
    opts: &ParseOptions,
) -> FhirResult<SearchQuery> {
    let mut q = SearchQuery {
        types,
        conditions: vec![],
        sort: vec![],
        count: opts.default_count,
        total: Total::None,
        summary: Summary::False,
        elements: None,
        includes: vec![],
        revincludes: vec![],
        cursor: None,
        link_params: vec![],
        visible: None,
        readable: None,
    };
    for (name, value) in params {
        let keep = |q: &mut SearchQuery| q.link_params.push((name.clone(), value.clone()));
        match name.as_str() {
            "_format" | "_pretty" | "_type" => {}
            CURSOR => q.cursor = Some(value.clone()),
            "_count" => {
                let n: i64 = value.parse().map_err(|_| bad(name, "not a whole number"))?;
                if n < 0 {
                    return Err(bad(name, "must not be negative"));
                }
                q.count = n.min(opts.max_count);
                // Links show the page size served, not the one asked for.
                q.link_params.push((name.clone(), q.count.to_string()));
            }
            "_total" => {
                q.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => return Err(bad(name, "takes none, estimate or accurate")),
                };
                keep(&mut q);
            }
            "_summary" => {
                q.summary = match value.as_str() {
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    _ => return Err(bad(name, "takes true, text, data, count or false")),
                };
                keep(&mut q);
            }
            "_elements" => {
                q.elements = Some(
                    value
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                );
                keep(&mut q);
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (descending, code) = match key.strip_prefix('-') {
                        Some(c) => (true, c),
                        None => (false, key),
                    };
                    let kind = match code {
                        "_id" => ParamType::Token,
                        "_lastUpdated" => ParamType::Date,
                        _ => match find_param(&q.types, code) {
                            Some(p) if p.indexed() && p.kind != ParamType::Composite => p.kind,
                            _ => return Err(bad(name, format!("cannot sort by '{code}'"))),
                        },
                    };
                    q.sort.push(SortKey {
                        param: code.into(),
                        kind,
                        descending,
                    });
                }
                keep(&mut q);
            }
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let rev = name.starts_with("_revinclude");
                if let Some(inc) = parse_include(name, value, &q.types, rev)? {
                    if rev {
                        q.revincludes.push(inc);
                    } else {
                        q.includes.push(inc);
                    }
                    keep(&mut q);
                } else if opts.strict {
                    return Err(bad(
                        name,
                        format!("'{value}' names a type this server does not serve"),
                    ));
                }
            }
            n if is_control(n) => {}
            _ => match parse_filter(&q.types, name, value, opts.base_url)? {
                Parsed::Condition(_) if q.conditions.len() >= MAX_FILTERS => {
                    return Err(bad(
                        name,
                        format!("a search may combine at most {MAX_FILTERS} filters"),
                    ))
                }
                Parsed::Condition(c) => {
                    q.conditions.push(c);
                    keep(&mut q);
                }
                Parsed::Unknown(n) if opts.strict => {
                    return Err(bad(
                        &n,
                        "this search parameter is not supported (Prefer: handling=strict)",
                    ))
                }
                Parsed::Unknown(_) => {}
            },
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ParseOptions<'static> {
        ParseOptions {
            default_count: 50,
            max_count: 100,
            strict: false,
            base_url: "http://h/fhir",
        }
    }

    fn parse_one(t: &str, k: &str, v: &str) -> Condition {
        let q = parse(vec![t.into()], &[(k.into(), v.into())], &opts()).unwrap();
        q.conditions.into_iter().next().unwrap()
    }

    #[test]
    fn escaping_splits_only_on_unescaped_separators() {
        assert_eq!(split_escaped(r"a\,b,c", ','), ["a,b", "c"]);
        assert_eq!(split_escaped(r"s|c\|d", '|'), ["s", r"c|d"]);
        assert_eq!(unescape(r"x\$y"), "x$y");
    }

    #[test]
    fn numbers_carry_their_implicit_precision() {
        assert_eq!(parse_number("25"), Some((25.0, 24.5, 25.5)));
        let (_, lo, hi) = parse_number("25.30").unwrap();
        assert!((lo - 25.295).abs() < 1e-9 && (hi - 25.305).abs() < 1e-9);
        assert!(parse_number("abc").is_none());
        assert!(parse_number("NaN").is_none());
    }

    #[test]
    fn tokens_references_chains_and_has() {
        assert_eq!(
            parse_one("Observation", "code", "http://loinc.org|44261-6"),
            Condition::Param {
                param: "code".into(),
                kind: ParamType::Token,
                any: vec![Match::Token {
                    system: Some("http://loinc.org".into()),
                    code: Some("44261-6".into())
                }],
                negate: false
            }
        );
        let Condition::Param { any, .. } =
            parse_one("Observation", "subject", "http://h/fhir/Patient/1")
        else {
            panic!()
        };
        assert_eq!(
            any[0],
            Match::Reference {
                target_type: Some("Patient".into()),
                target_id: Some("1".into()),
                url: None
            }
        );
        let Condition::Chain {
            target_types,
            inner,
            ..
        } = parse_one("Observation", "subject:Patient.name", "x")
        else {
            panic!()
        };
        assert_eq!(target_types, ["Patient"]);
        assert!(matches!(*inner, Condition::Param { ref param, .. } if param == "name"));
        let Condition::Has {
            source_type, inner, ..
        } = parse_one(
            "Practitioner",
            "_has:Patient:general-practitioner:_has:Observation:subject:code",
            "1",
        )
        else {
            panic!()
        };
        assert_eq!(source_type, "Patient");
        assert!(matches!(*inner, Condition::Has { .. }));
    }

    #[test]
    fn oversized_searches_are_refused() {
        let many = vec!["x"; 201].join(",");
        assert!(parse(vec!["Patient".into()], &[("family".into(), many)], &opts()).is_err());
        let filters: Vec<(String, String)> =
            (0..51).map(|_| ("family".into(), "x".into())).collect();
        assert!(parse(vec!["Patient".into()], &filters, &opts()).is_err());
    }

    #[test]
    fn malformed_values_and_strict_unknowns_are_errors() {
        let o = opts();
        assert!(parse(
            vec!["Patient".into()],
            &[("birthdate".into(), "2024-13-45".into())],
            &o
        )
        .is_err());
        assert!(parse(
            vec!["Observation".into()],
            &[("value-quantity".into(), "zz5".into())],
            &o
        )
        .is_err());
        let q = parse(
            vec!["Patient".into()],
            &[("nonsense".into(), "1".into())],
            &o,
        )
        .unwrap();
        assert!(q.conditions.is_empty() && q.link_params.is_empty());
        let strict = ParseOptions {
            strict: true,
            ..opts()
        };
        assert!(parse(
            vec!["Patient".into()],
            &[("nonsense".into(), "1".into())],
            &strict
        )
        .is_err());
    }
}
