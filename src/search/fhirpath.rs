//! A small FHIRPath evaluator: the subset the official R4 search-parameter expressions use. Paths
//! (with choice types: `Observation.value` finds `valueQuantity`), `|`, `as`/`is`/`ofType`,
//! `where(…)`, `resolve()` (a reference's target type), `exists()`, `extension(url)`,
//! `hasExtension(url)`, `=`, `!=`, `and`, `or`, string and boolean literals.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The input collection (`$this`, or the context of a relative path).
    This,
    /// A leading type name (`Observation.code`): keeps the items of that type.
    TypeFilter(String),
    Member(Box<Expr>, String),
    Call(Box<Expr>, String, Vec<Expr>),
    Union(Box<Expr>, Box<Expr>),
    As(Box<Expr>, String),
    Is(Box<Expr>, String),
    Eq(Box<Expr>, Box<Expr>, bool),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Str(String),
    Bool(bool),
}

/// A node of the resource being evaluated, with its FHIR type when known.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub value: NodeValue<'a>,
    pub ty: Option<String>,
}

#[derive(Debug, Clone)]
pub enum NodeValue<'a> {
    Json(&'a Value),
    Owned(Value),
}

impl<'a> Node<'a> {
    pub fn json(&self) -> &Value {
        match &self.value {
            NodeValue::Json(v) => v,
            NodeValue::Owned(v) => v,
        }
    }

    fn of(value: &'a Value, ty: Option<String>) -> Node<'a> {
        Node {
            value: NodeValue::Json(value),
            ty,
        }
    }

    fn bool(b: bool) -> Node<'a> {
        Node {
            value: NodeValue::Owned(Value::Bool(b)),
            ty: Some("boolean".into()),
        }
    }
}

// ---------------------------------------------------------------- parsing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    Open,
    Close,
    Comma,
    Pipe,
    Eq,
    Ne,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '.' => (out.push(Tok::Dot), i += 1).1,
            '(' => (out.push(Tok::Open), i += 1).1,
            ')' => (out.push(Tok::Close), i += 1).1,
            ',' => (out.push(Tok::Comma), i += 1).1,
            '|' => (out.push(Tok::Pipe), i += 1).1,
            '=' => (out.push(Tok::Eq), i += 1).1,
            '!' if chars.get(i + 1) == Some(&'=') => (out.push(Tok::Ne), i += 2).1,
            '\'' => {
                let mut j = i + 1;
                let mut lit = String::new();
                while j < chars.len() && chars[j] != '\'' {
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        j += 1;
                    }
                    lit.push(chars[j]);
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(format!("unterminated string in '{s}'"));
                }
                out.push(Tok::Str(lit));
                i = j + 1;
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected '{other}' in '{s}'")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(i)) if i == k)
    }

    fn expect(&mut self, t: Tok) -> Result<(), String> {
        match self.next() {
            Some(got) if got == t => Ok(()),
            got => Err(format!("expected {t:?}, found {got:?}")),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.equality()?;
        while self.keyword("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.equality()?));
        }
        Ok(e)
    }

    fn equality(&mut self) -> Result<Expr, String> {
        let e = self.union()?;
        match self.peek() {
            Some(Tok::Eq) => {
                self.pos += 1;
                Ok(Expr::Eq(Box::new(e), Box::new(self.union()?), false))
            }
            Some(Tok::Ne) => {
                self.pos += 1;
                Ok(Expr::Eq(Box::new(e), Box::new(self.union()?), true))
            }
            _ => Ok(e),
        }
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut e = self.typed()?;
        while self.peek() == Some(&Tok::Pipe) {
            self.pos += 1;
            e = Expr::Union(Box::new(e), Box::new(self.typed()?));
        }
        Ok(e)
    }

    fn typed(&mut self) -> Result<Expr, String> {
        let mut e = self.postfix()?;
        loop {
            let is_as = self.keyword("as");
            if !(is_as || self.keyword("is")) {
                return Ok(e);
            }
            self.pos += 1;
            let Some(Tok::Ident(t)) = self.next() else {
                return Err("a type name must follow as/is".into());
            };
            e = if is_as {
                Expr::As(Box::new(e), t)
            } else {
                Expr::Is(Box::new(e), t)
            };
        }
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        while self.peek() == Some(&Tok::Dot) {
            self.pos += 1;
            let Some(Tok::Ident(name)) = self.next() else {
                return Err("a name must follow '.'".into());
            };
            e = self.invocation(e, name)?;
        }
        Ok(e)
    }

    fn invocation(&mut self, on: Expr, name: String) -> Result<Expr, String> {
        if self.peek() != Some(&Tok::Open) {
            return Ok(Expr::Member(Box::new(on), name));
        }
        self.pos += 1;
        let mut args = Vec::new();
        if self.peek() != Some(&Tok::Close) {
            loop {
                // Type arguments (as(Quantity), ofType(Reference)) parse as relative paths.
                args.push(self.or()?);
                if self.peek() == Some(&Tok::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        self.expect(Tok::Close)?;
        Ok(match (name.as_str(), args.as_slice()) {
            ("as" | "ofType", [arg]) => Expr::As(Box::new(on), type_name(arg)?),
            ("is", [arg]) => Expr::Is(Box::new(on), type_name(arg)?),
            _ => Expr::Call(Box::new(on), name, args),
        })
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Tok::Open) => {
                let e = self.or()?;
                self.expect(Tok::Close)?;
                Ok(e)
            }
            Some(Tok::Str(s)) => Ok(Expr::Str(s)),
            Some(Tok::Ident(i)) if i == "true" || i == "false" => Ok(Expr::Bool(i == "true")),
            Some(Tok::Ident(i)) if i == "$this" => Ok(Expr::This),
            Some(Tok::Ident(i)) => {
                if i.starts_with(|c: char| c.is_ascii_uppercase())
                    && self.peek() != Some(&Tok::Open)
                {
                    Ok(Expr::TypeFilter(i))
                } else {
                    self.invocation(Expr::This, i)
                }
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

fn type_name(e: &Expr) -> Result<String, String> {
    match e {
        Expr::TypeFilter(t) => Ok(t.clone()),
        Expr::Member(on, t) if **on == Expr::This => Ok(t.clone()),
        _ => Err(format!("expected a type name, found {e:?}")),
    }
}

pub fn parse(s: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!("trailing input in '{s}'"));
    }
    Ok(e)
}

// ---------------------------------------------------------------- evaluation

/// Evaluates `expr` on a resource; returns the selected nodes.
pub fn evaluate<'a>(expr: &Expr, resource: &'a Value) -> Vec<Node<'a>> {
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_string);
    eval(expr, &[Node::of(resource, ty)])
}

/// Evaluates a relative expression (a composite component) on nodes already selected.
pub fn evaluate_on<'a>(expr: &Expr, input: &[Node<'a>]) -> Vec<Node<'a>> {
    eval(expr, input)
}

fn same_type(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn eval<'a>(expr: &Expr, input: &[Node<'a>]) -> Vec<Node<'a>> {
    match expr {
        Expr::This => input.to_vec(),
        Expr::TypeFilter(t) => input
            .iter()
            .filter(|n| {
                t == "Resource"
                    || t == "DomainResource"
                    || n.ty.as_deref().is_some_and(|ty| same_type(ty, t))
            })
            .cloned()
            .collect(),
        Expr::Member(on, name) => {
            let mut out = Vec::new();
            for n in eval(on, input) {
                if let NodeValue::Json(v) = n.value {
                    member(v, name, &mut out);
                }
            }
            out
        }
        Expr::Union(a, b) => {
            let mut out = eval(a, input);
            out.extend(eval(b, input));
            out
        }
        Expr::As(on, t) => eval(on, input)
            .into_iter()
            .filter(|n| n.ty.as_deref().is_some_and(|ty| same_type(ty, t)))
            .collect(),
        Expr::Is(on, t) => {
            let items = eval(on, input);
            match items.as_slice() {
                [n] => vec![Node::bool(
                    n.ty.as_deref().is_some_and(|ty| same_type(ty, t)),
                )],
                _ => vec![],
            }
        }
        Expr::Eq(a, b, negate) => {
            let (x, y) = (eval(a, input), eval(b, input));
            if x.is_empty() || y.is_empty() {
                return vec![];
            }
            let equal = x.len() == y.len() && x.iter().zip(&y).all(|(p, q)| p.json() == q.json());
            vec![Node::bool(equal != *negate)]
        }
        Expr::And(a, b) => vec![Node::bool(
            truthy(&eval(a, input)) && truthy(&eval(b, input)),
        )],
        Expr::Or(a, b) => vec![Node::bool(
            truthy(&eval(a, input)) || truthy(&eval(b, input)),
        )],
        Expr::Str(s) => vec![Node {
            value: NodeValue::Owned(Value::String(s.clone())),
            ty: Some("string".into()),
        }],
        Expr::Bool(b) => vec![Node::bool(*b)],
        Expr::Call(on, name, args) => call(name, &eval(on, input), args),
    }
}

fn truthy(items: &[Node]) -> bool {
    matches!(items, [n] if n.json() == &Value::Bool(true))
}

fn call<'a>(name: &str, items: &[Node<'a>], args: &[Expr]) -> Vec<Node<'a>> {
    let url_arg = || match args.first() {
        Some(Expr::Str(s)) => Some(s.clone()),
        _ => None,
    };
    match name {
        "where" => items
            .iter()
            .filter(|n| {
                args.first()
                    .is_some_and(|c| truthy(&eval(c, std::slice::from_ref(n))))
            })
            .cloned()
            .collect(),
        "exists" => vec![Node::bool(!items.is_empty())],
        "empty" => vec![Node::bool(items.is_empty())],
        "not" => match items {
            [n] => vec![Node::bool(n.json() != &Value::Bool(true))],
            _ => vec![],
        },
        "first" => items.iter().take(1).cloned().collect(),
        "resolve" => items
            .iter()
            .filter_map(|n| {
                let r = n.json().get("reference")?.as_str()?;
                let ty = reference_type(r)?;
                Some(Node {
                    value: n.value.clone(),
                    ty: Some(ty.to_string()),
                })
            })
            .collect(),
        "extension" => {
            let Some(url) = url_arg() else { return vec![] };
            let mut out = Vec::new();
            for n in items {
                if let NodeValue::Json(v) = n.value {
                    for e in v
                        .get("extension")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if e.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                            out.push(Node::of(e, Some("Extension".into())));
                        }
                    }
                }
            }
            out
        }
        "hasExtension" => {
            let url = url_arg();
            let has = items.iter().any(|n| {
                n.json()
                    .get("extension")
                    .and_then(Value::as_array)
                    .is_some_and(|exts| {
                        exts.iter()
                            .any(|e| e.get("url").and_then(Value::as_str) == url.as_deref())
                    })
            });
            vec![Node::bool(has)]
        }
        _ => vec![],
    }
}

/// The resource type a reference string points to: `Patient/1`, `http://x/fhir/Patient/1`,
/// `Patient/1/_history/2`.
pub fn reference_type(reference: &str) -> Option<&str> {
    reference_parts(reference).map(|(t, _)| t)
}

/// The `(type, id)` a reference names: its last `Type/id` segments (before `_history/v`).
pub fn reference_parts(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next()?;
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    let i = if n >= 4 && segs[n - 2] == "_history" {
        n - 4
    } else {
        n.checked_sub(2)?
    };
    let t = segs.get(i)?;
    let id = segs.get(i + 1)?;
    t.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some((*t, *id))
}

/// Adds the children called `name` (or, for a choice element, `name[Type]`) of `v` to `out`.
fn member<'a>(v: &'a Value, name: &str, out: &mut Vec<Node<'a>>) {
    let Some(obj) = v.as_object() else { return };
    let push = |child: &'a Value, ty: Option<String>, out: &mut Vec<Node<'a>>| match child {
        Value::Array(items) => out.extend(items.iter().map(|i| Node::of(i, ty.clone()))),
        other => out.push(Node::of(other, ty)),
    };
    if let Some(child) = obj.get(name) {
        let ty = match child {
            Value::Object(o) if o.contains_key("resourceType") => o
                .get("resourceType")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        push(child, ty, out);
        return;
    }
    for (k, child) in obj {
        if let Some(suffix) = k.strip_prefix(name) {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                push(child, Some(suffix.to_string()), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, r: &Value) -> Vec<Value> {
        let e = parse(expr).unwrap();
        evaluate(&e, r).iter().map(|n| n.json().clone()).collect()
    }

    #[test]
    fn paths_choice_types_and_unions() {
        let o = json!({"resourceType": "Observation", "code": {"text": "PHQ-9"},
            "valueQuantity": {"value": 12}, "component": [{"valueString": "x"}]});
        assert_eq!(
            values("Observation.code", &o),
            vec![json!({"text": "PHQ-9"})]
        );
        assert_eq!(
            values("(Observation.value as Quantity)", &o),
            vec![json!({"value": 12})]
        );
        assert_eq!(
            values("Observation.value.as(Quantity)", &o),
            vec![json!({"value": 12})]
        );
        assert!(values("(Observation.value as CodeableConcept)", &o).is_empty());
        assert_eq!(
            values(
                "Observation.value as Quantity | Observation.component.value as string",
                &o
            ),
            vec![json!({"value": 12}), json!("x")]
        );
        assert!(values("Patient.name", &o).is_empty());
    }

    #[test]
    fn where_resolve_and_functions() {
        let cp = json!({"resourceType": "CarePlan", "subject": {"reference": "Patient/1"},
            "author": {"reference": "Practitioner/2"}});
        assert_eq!(
            values("CarePlan.subject.where(resolve() is Patient)", &cp).len(),
            1
        );
        assert!(values("CarePlan.author.where(resolve() is Patient)", &cp).is_empty());
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"},
            {"system": "email", "value": "a@b"}], "deceasedBoolean": false});
        assert_eq!(
            values("Patient.telecom.where(system='email')", &p),
            vec![json!({"system": "email", "value": "a@b"})]
        );
        assert_eq!(
            values(
                "Patient.deceased.exists() and Patient.deceased != false",
                &p
            ),
            vec![json!(false)]
        );
        assert_eq!(
            reference_type("http://x/fhir/Patient/1/_history/2"),
            Some("Patient")
        );
        assert_eq!(reference_type("#contained"), None);
    }
}
