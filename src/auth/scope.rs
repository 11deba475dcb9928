//! SMART App Launch 2.x scopes (scopes-and-launch-context.html): `context/Type.perms[?query]` with
//! context `patient`, `user` or `system`, type a resource type or `*`, perms v2 letters `cruds` (in
//! that order) or v1 `read` (= `rs`), `write` (= `cud`) and `*` (= `cruds`). Anything else, such as
//! `openid` or `launch/patient`, grants no data access and is kept only to be echoed back.

use std::fmt;

/// One interaction class a scope can permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    const ALL: [Perm; 5] = [
        Perm::Create,
        Perm::Read,
        Perm::Update,
        Perm::Delete,
        Perm::Search,
    ];

    fn bit(self) -> u8 {
        match self {
            Perm::Create => 1,
            Perm::Read => 2,
            Perm::Update => 4,
            Perm::Delete => 8,
            Perm::Search => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }

    /// The scope letter, for messages ("needs patient/Observation.r").
    pub fn name(self) -> char {
        self.letter()
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms(u8);

impl Perms {
    pub fn has(self, p: Perm) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersect(self, other: Perms) -> Perms {
        Perms(self.0 & other.0)
    }

    /// `cruds` letters in canonical order; v1 names `read`, `write`, `*`.
    fn parse(s: &str) -> Option<Perms> {
        match s {
            "read" => return Some(Perms(Perm::Read.bit() | Perm::Search.bit())),
            "write" => {
                return Some(Perms(
                    Perm::Create.bit() | Perm::Update.bit() | Perm::Delete.bit(),
                ))
            }
            "*" => return Some(Perms(31)),
            _ => {}
        }
        // v2: a non-empty subsequence of "cruds", in that order, each letter once.
        let mut bits = 0u8;
        let mut next = 0;
        for ch in s.chars() {
            let pos = Perm::ALL[next..].iter().position(|p| p.letter() == ch)?;
            bits |= Perm::ALL[next + pos].bit();
            next += pos + 1;
        }
        (bits != 0).then_some(Perms(bits))
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in Perm::ALL {
            if self.has(p) {
                write!(f, "{}", p.letter())?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// A resource scope: who (context), what (type, or every type), how (permissions), and an
/// optional search filter narrowing the resources it covers (granular scopes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// None for `*`.
    pub resource_type: Option<String>,
    pub perms: Perms,
    /// The granular query, as decoded name/value pairs (ANDed).
    pub filter: Vec<(String, String)>,
}

impl Scope {
    /// Parses one scope; None for anything that is not a resource scope.
    pub fn parse(s: &str) -> Option<Scope> {
        let (context, rest) = s.split_once('/')?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (ty, perms) = body.split_once('.')?;
        let resource_type = match ty {
            "*" => None,
            t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Some(t.to_string())
            }
            _ => return None,
        };
        let perms = Perms::parse(perms)?;
        let filter: Vec<(String, String)> = match query {
            Some(q) => url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect(),
            None => vec![],
        };
        if query.is_some() && filter.is_empty() {
            return None;
        }
        Some(Scope {
            context,
            resource_type,
            perms,
            filter,
        })
    }

    /// Whether this scope speaks about `resource_type`.
    pub fn covers_type(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
    }

    /// The part of `self` that `granted` allows (same context, type within, permissions in both,
    /// and the same filter unless `granted` has none). None when nothing is left.
    pub fn within(&self, granted: &Scope) -> Option<Scope> {
        if self.context != granted.context {
            return None;
        }
        let resource_type = match (&self.resource_type, &granted.resource_type) {
            (_, None) => self.resource_type.clone(),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            // Asking for `*` when only one type was granted: that type.
            (None, Some(b)) => Some(b.clone()),
            _ => return None,
        };
        if !granted.filter.is_empty() && granted.filter != self.filter {
            if self.filter.is_empty() {
                // Asking for everything when only a filtered part was granted: that part.
                return Some(Scope {
                    resource_type,
                    perms: self.perms.intersect(granted.perms),
                    ..granted.clone()
                })
                .filter(|s| !s.perms.is_empty());
            }
            return None;
        }
        let perms = self.perms.intersect(granted.perms);
        (!perms.is_empty()).then(|| Scope {
            context: self.context,
            resource_type,
            perms,
            filter: self.filter.clone(),
        })
    }
}

impl fmt::Display for Scope {
    /// The canonical v2 spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}.{}",
            self.context.as_str(),
            self.resource_type.as_deref().unwrap_or("*"),
            self.perms
        )?;
        if !self.filter.is_empty() {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&self.filter)
                .finish();
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// The resource scopes in a space-separated scope string (others are skipped).
pub fn parse_scopes(s: &str) -> Vec<Scope> {
    s.split_whitespace().filter_map(Scope::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(s: &str) -> String {
        Scope::parse(s)
            .map(|s| s.perms.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn v2_and_v1_permissions_map_as_smart_says() {
        assert_eq!(perms("patient/Observation.rs"), "rs");
        assert_eq!(perms("system/*.cruds"), "cruds");
        assert_eq!(perms("user/CarePlan.cud"), "cud");
        assert_eq!(perms("patient/*.read"), "rs");
        assert_eq!(perms("user/CarePlan.write"), "cud");
        assert_eq!(perms("system/Observation.*"), "cruds");
        assert_eq!(perms("system/Observation.d"), "d");
    }

    #[test]
    fn malformed_scopes_grant_nothing() {
        for s in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "patient/.rs",
            "practitioner/Observation.rs",
            "openid",
            "launch/patient",
            "patient/Observation.rs?",
            "patient/Obs-ervation.rs",
        ] {
            assert_eq!(Scope::parse(s), None, "{s}");
        }
    }

    #[test]
    fn granular_scopes_keep_their_decoded_query() {
        let s = Scope::parse(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|survey",
        )
        .unwrap();
        assert_eq!(
            s.filter,
            vec![(
                "category".to_string(),
                "http://terminology.hl7.org/CodeSystem/observation-category|survey".to_string()
            )]
        );
        assert_eq!(s.resource_type.as_deref(), Some("Observation"));
    }

    #[test]
    fn requests_are_capped_by_the_grant() {
        let granted = parse_scopes("system/Patient.rs system/Observation.rs");
        let cap = |req: &str| -> Vec<String> {
            parse_scopes(req)
                .iter()
                .flat_map(|r| granted.iter().filter_map(|g| r.within(g)))
                .map(|s| s.to_string())
                .collect()
        };
        assert_eq!(
            cap("system/Patient.rs system/Observation.cruds system/CarePlan.rs"),
            ["system/Patient.rs", "system/Observation.rs"]
        );
        assert_eq!(cap("patient/Patient.rs"), Vec::<String>::new());
        assert_eq!(
            cap("system/*.read"),
            ["system/Patient.rs", "system/Observation.rs"]
        );
    }
}
