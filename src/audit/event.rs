//! The AuditEvent of one interaction, in the shape of IHE Basic Audit Log Patterns (BALP, RESTful
//! events): type `rest`, the interaction as subtype, action C/R/U/D/E, the agents (client, user,
//! patient in context, with the network address), this server as source observer, and entities
//! (each resource touched with its version, the patient concerned, the query of a search). No
//! clinical content: references and the query string only.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::LazyLock;

use super::Logged;
use crate::auth::Access;
use crate::fhir::format_instant;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";

/// A `Coding` of constant text, serialized on first use into a `static` of its own.
macro_rules! coding {
    ($system:expr, $code:expr, $display:expr) => {{
        static JSON: LazyLock<Box<RawValue>> =
            LazyLock::new(|| Coding::render($system, $code, $display));
        Coding(&JSON)
    }};
}

/// The FHIR RESTful interactions (http://hl7.org/fhir/restful-interaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Create,
    SearchType,
    SearchSystem,
    Capabilities,
    Transaction,
    Batch,
    Operation,
}

impl Interaction {
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::Capabilities => "capabilities",
            Interaction::Transaction => "transaction",
            Interaction::Batch => "batch",
            Interaction::Operation => "operation",
        }
    }

    /// The AuditEvent action (BALP: searches are E, reads and history R).
    pub fn action(self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Update | Interaction::Patch => "U",
            Interaction::Delete => "D",
            Interaction::SearchType
            | Interaction::SearchSystem
            | Interaction::Transaction
            | Interaction::Batch
            | Interaction::Operation => "E",
            _ => "R",
        }
    }
}

/// The interaction a request under `/fhir` asks for, and the resource it names (`Type/id`), from
/// its method and path alone: what failed requests are audited as.
pub fn infer(method: &str, path: &str) -> (Interaction, Option<String>) {
    let segs: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let ty = |s: &str| crate::fhir::is_enabled(s);
    use Interaction as I;
    if segs.iter().any(|s| s.starts_with('$')) {
        return (I::Operation, None);
    }
    let result = match (method, segs.as_slice()) {
        ("GET", []) => (I::SearchSystem, None),
        ("POST", []) => (I::Transaction, None),
        ("GET", ["metadata"]) => (I::Capabilities, None),
        ("GET", ["_history"]) => (I::HistorySystem, None),
        ("POST", ["_search"]) => (I::SearchSystem, None),
        ("GET", [t]) if ty(t) => (I::SearchType, None),
        ("POST", [t]) if ty(t) => (I::Create, None),
        ("POST", [t, "_search"]) if ty(t) => (I::SearchType, None),
        ("GET", [t, "_history"]) if ty(t) => (I::HistoryType, None),
        ("GET", [t, id]) if ty(t) => (I::Read, Some(format!("{t}/{id}"))),
        ("PUT", [t, id]) if ty(t) => (I::Update, Some(format!("{t}/{id}"))),
        ("PATCH", [t, id]) if ty(t) => (I::Patch, Some(format!("{t}/{id}"))),
        ("DELETE", [t, id]) if ty(t) => (I::Delete, Some(format!("{t}/{id}"))),
        ("GET", [t, id, "_history"]) if ty(t) => (I::HistoryInstance, Some(format!("{t}/{id}"))),
        ("GET", [t, id, "_history", v]) if ty(t) => {
            (I::Vread, Some(format!("{t}/{id}/_history/{v}")))
        }
        ("GET", [t, id, _]) if ty(t) => (I::SearchType, Some(format!("{t}/{id}"))),
        ("PUT" | "PATCH" | "DELETE", [t]) if ty(t) => match method {
            "PUT" => (I::Update, None),
            "PATCH" => (I::Patch, None),
            _ => (I::Delete, None),
        },
        (_, [t, ..]) if ty(t) => (I::Read, None),
        _ => (I::Operation, None),
    };
    // Whatever the path says becomes a reference only if it is well formed.
    match result {
        (i, Some(r))
            if r.split('/')
                .skip(1)
                .all(|s| s == "_history" || crate::fhir::valid_id(s)) =>
        {
            (i, Some(r))
        }
        (i, _) => (i, None),
    }
}

/// What every AuditEvent of one request shares: the interaction, who asked from where, and the
/// observer. `event` completes it with the outcome and the entities.
#[derive(Debug, Clone)]
pub struct AuditSeed {
    pub interaction: Interaction,
    /// The client: as the token names it, or none (no valid token, or authorization off).
    client: Client,
    address: Option<String>,
    fhir_user: Option<String>,
    /// The patient in the token's context, as a reference (also an entity of every event).
    patient: Option<String>,
    base_url: String,
    /// A token request (DICOM User Authentication / Login) rather than a RESTful interaction.
    login: bool,
}

#[derive(Debug, Clone)]
enum Client {
    Unauthenticated,
    Anonymous,
    Id(String),
}

impl AuditSeed {
    pub fn new(
        interaction: Interaction,
        access: Option<&Access>,
        address: Option<&str>,
        base_url: &str,
    ) -> AuditSeed {
        AuditSeed {
            interaction,
            client: match access {
                Some(a) if a.unrestricted && a.client_id.is_none() => Client::Anonymous,
                Some(a) => Client::Id(a.who()),
                None => Client::Unauthenticated,
            },
            address: address.map(str::to_string),
            fhir_user: access.and_then(|a| a.fhir_user.clone()),
            patient: access.and_then(|a| a.patient.as_ref().map(|p| format!("Patient/{p}"))),
            base_url: base_url.to_string(),
            login: false,
        }
    }

    /// The same start for another interaction of the request (an entry of a Bundle).
    pub fn with_interaction(&self, interaction: Interaction) -> AuditSeed {
        AuditSeed {
            interaction,
            ..self.clone()
        }
    }

    /// The start of the AuditEvent of a token request by `client` (as it claimed to be).
    pub fn login(client: &str, address: Option<&str>, base_url: &str) -> AuditSeed {
        let access = Access {
            client_id: Some(client.to_string()),
            ..Default::default()
        };
        AuditSeed {
            login: true,
            ..AuditSeed::new(Interaction::Operation, Some(&access), address, base_url)
        }
    }

    /// The AuditEvent for an HTTP `status` with these entities (the token's patient is added),
    /// with its id and `meta` stamped, serialized as it is logged and stored.
    pub fn event(&self, status: u16, mut entities: Vec<Entity>) -> Logged {
        if let Some(p) = &self.patient {
            if !entities.iter().any(|e| e.reference() == Some(p)) {
                entities.push(Entity::Patient(p.clone()));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let recorded = crate::rest::now_micros();
        let instant = format_instant(recorded);
        let (outcome, outcome_desc) = match status {
            200..=399 => ("0", None),
            400..=499 => ("4", Some(format!("HTTP {status}"))),
            _ => ("8", Some(format!("HTTP {status}"))),
        };
        let (ty, subtype, action) = if self.login {
            (
                coding!(DCM, "110114", "User Authentication"),
                coding!(DCM, "110122", "Login"),
                "E",
            )
        } else {
            (
                coding!(EVENT_TYPE, "rest", "RESTful Operation"),
                Coding::interaction(self.interaction),
                self.interaction.action(),
            )
        };
        let mut agent = vec![AgentJson {
            ty: Concept {
                coding: [coding!(DCM, "110153", "Source Role ID")],
            },
            who: match &self.client {
                Client::Unauthenticated => Who::Display("unauthenticated"),
                Client::Anonymous => Who::Display("anonymous (authorization disabled)"),
                Client::Id(id) => Who::Identifier(Identifier {
                    system: "urn:cairn:client-id",
                    value: id,
                }),
            },
            requestor: true,
            network: self
                .address
                .as_deref()
                .map(|address| Network { address, ty: "2" }),
        }];
        if let Some(user) = &self.fhir_user {
            agent.push(AgentJson {
                ty: Concept {
                    coding: [coding!(PARTICIPATION, "IRCP", "information recipient")],
                },
                who: Who::Reference(user),
                requestor: true,
                network: None,
            });
        }
        if let Some(p) = &self.patient {
            agent.push(AgentJson {
                ty: Concept {
                    coding: [coding!(ROLE_CLASS, "PAT", "patient")],
                },
                who: Who::Reference(p),
                requestor: false,
                network: None,
            });
        }
        let event = EventJson {
            resource_type: "AuditEvent",
            id: &id,
            meta: Meta {
                version_id: "1",
                last_updated: &instant,
            },
            ty,
            subtype: [subtype],
            action,
            recorded: &instant,
            outcome,
            outcome_desc,
            agent,
            source: Source {
                site: &self.base_url,
                observer: Observer {
                    display: "Cairn FHIR server",
                    identifier: Identifier {
                        system: "urn:ietf:rfc:3986",
                        value: &self.base_url,
                    },
                },
                ty: [coding!(SOURCE_TYPE, "4", "Application Server")],
            },
            entity: &entities,
        };
        // Serializing these types cannot fail: every map key is a string. An event is about
        // 1.5 KB: one allocation rather than doubling from serde_json's 128 bytes.
        let mut buf = Vec::with_capacity(2048);
        let content = serde_json::to_writer(&mut buf, &event)
            .ok()
            .and_then(|()| String::from_utf8(buf).ok())
            .unwrap_or_default();
        Logged::new(id, recorded, content)
    }
}

/// An entity of an AuditEvent: what the interaction touched, whom it concerned, what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    /// A resource (`Type/id` or `Type/id/_history/v`).
    Resource(String),
    /// A patient, as a reference (`Patient/id`).
    Patient(String),
    /// A search's query, base64-encoded.
    Query(String),
}

impl Entity {
    fn reference(&self) -> Option<&String> {
        match self {
            Entity::Resource(r) | Entity::Patient(r) => Some(r),
            Entity::Query(_) => None,
        }
    }
}

impl Serialize for Entity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (what, ty, role, query) = match self {
            Entity::Resource(r) => (
                Some(r),
                coding!(ENTITY_TYPE, "2", "System Object"),
                coding!(OBJECT_ROLE, "4", "Domain Resource"),
                None,
            ),
            Entity::Patient(r) => (
                Some(r),
                coding!(ENTITY_TYPE, "1", "Person"),
                coding!(OBJECT_ROLE, "1", "Patient"),
                None,
            ),
            Entity::Query(q) => (
                None,
                coding!(ENTITY_TYPE, "2", "System Object"),
                coding!(OBJECT_ROLE, "24", "Query"),
                Some(q),
            ),
        };
        EntityJson {
            what: what.map(|reference| Reference { reference }),
            ty,
            role,
            query: query.map(String::as_str),
        }
        .serialize(s)
    }
}

/// A resource the interaction touched (`Type/id` or `Type/id/_history/v`).
pub fn resource_entity(reference: &str) -> Entity {
    Entity::Resource(reference.to_string())
}

/// The patient the interaction concerns.
pub fn patient_entity(id: &str) -> Entity {
    Entity::Patient(format!("Patient/{id}"))
}

/// A search's query (base64, as BALP and R4 `entity.query` want), e.g. `Patient?family=x`.
pub fn query_entity(query: &str) -> Entity {
    Entity::Query(STANDARD.encode(query))
}

// The AuditEvent's JSON shape, serialized straight from borrowed parts (no JSON tree is built).

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventJson<'a> {
    resource_type: &'static str,
    id: &'a str,
    meta: Meta<'a>,
    #[serde(rename = "type")]
    ty: Coding,
    subtype: [Coding; 1],
    action: &'static str,
    recorded: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<String>,
    agent: Vec<AgentJson<'a>>,
    source: Source<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    entity: &'a [Entity],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    version_id: &'static str,
    last_updated: &'a str,
}

/// A Coding of fixed text, serialized once: every event repeats a few of them, and copying their
/// JSON costs less than serializing them each time (see `coding!`).
#[derive(Clone, Copy, Serialize)]
#[serde(transparent)]
struct Coding(&'static RawValue);

#[derive(Serialize)]
struct CodingJson {
    system: &'static str,
    code: &'static str,
    display: &'static str,
}

impl Coding {
    fn render(system: &'static str, code: &'static str, display: &'static str) -> Box<RawValue> {
        let json = CodingJson {
            system,
            code,
            display,
        };
        serde_json::value::to_raw_value(&json).expect("a Coding of text serializes")
    }

    /// The subtype of an interaction (a match, so a new interaction cannot be left out).
    fn interaction(i: Interaction) -> Coding {
        use Interaction as I;
        macro_rules! subtype {
            ($i:ident) => {
                coding!(INTERACTION, I::$i.code(), I::$i.code())
            };
        }
        match i {
            I::Read => subtype!(Read),
            I::Vread => subtype!(Vread),
            I::Update => subtype!(Update),
            I::Patch => subtype!(Patch),
            I::Delete => subtype!(Delete),
            I::HistoryInstance => subtype!(HistoryInstance),
            I::HistoryType => subtype!(HistoryType),
            I::HistorySystem => subtype!(HistorySystem),
            I::Create => subtype!(Create),
            I::SearchType => subtype!(SearchType),
            I::SearchSystem => subtype!(SearchSystem),
            I::Capabilities => subtype!(Capabilities),
            I::Transaction => subtype!(Transaction),
            I::Batch => subtype!(Batch),
            I::Operation => subtype!(Operation),
        }
    }
}

#[derive(Serialize)]
struct Concept {
    coding: [Coding; 1],
}

#[derive(Serialize)]
struct AgentJson<'a> {
    #[serde(rename = "type")]
    ty: Concept,
    who: Who<'a>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
}

/// A Reference with one of its elements: `{"display": …}`, `{"identifier": …}`, `{"reference": …}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Who<'a> {
    Display(&'static str),
    Identifier(Identifier<'a>),
    Reference(&'a str),
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'static str,
    value: &'a str,
}

#[derive(Serialize)]
struct Network<'a> {
    address: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
}

#[derive(Serialize)]
struct Source<'a> {
    site: &'a str,
    observer: Observer<'a>,
    #[serde(rename = "type")]
    ty: [Coding; 1],
}

#[derive(Serialize)]
struct Observer<'a> {
    display: &'static str,
    identifier: Identifier<'a>,
}

#[derive(Serialize)]
struct EntityJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<Reference<'a>>,
    #[serde(rename = "type")]
    ty: Coding,
    role: Coding,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
}

#[derive(Serialize)]
struct Reference<'a> {
    reference: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactions_are_inferred_from_method_and_path() {
        let i = |m: &str, p: &str| infer(m, p);
        assert_eq!(
            i("GET", "/fhir/Patient/1"),
            (Interaction::Read, Some("Patient/1".into()))
        );
        assert_eq!(i("GET", "/fhir/Patient/1/_history/2").0, Interaction::Vread);
        assert_eq!(
            i("GET", "/fhir/Patient/1/_history").0,
            Interaction::HistoryInstance
        );
        assert_eq!(
            i("GET", "/fhir/Patient/_history").0,
            Interaction::HistoryType
        );
        assert_eq!(i("GET", "/fhir/_history").0, Interaction::HistorySystem);
        assert_eq!(i("GET", "/fhir/Patient").0, Interaction::SearchType);
        assert_eq!(
            i("POST", "/fhir/Patient/_search").0,
            Interaction::SearchType
        );
        assert_eq!(i("GET", "/fhir").0, Interaction::SearchSystem);
        assert_eq!(i("POST", "/fhir/Patient").0, Interaction::Create);
        assert_eq!(i("PUT", "/fhir/Patient/1").0, Interaction::Update);
        assert_eq!(i("DELETE", "/fhir/Patient/1").0, Interaction::Delete);
        assert_eq!(i("PATCH", "/fhir/Patient/1").0, Interaction::Patch);
        assert_eq!(i("POST", "/fhir").0, Interaction::Transaction);
        assert_eq!(i("GET", "/fhir/metadata").0, Interaction::Capabilities);
        assert_eq!(
            i("POST", "/fhir/Patient/1/$everything").0,
            Interaction::Operation
        );
        assert_eq!(
            i("GET", "/fhir/Patient/1/Observation").0,
            Interaction::SearchType
        );
    }

    #[test]
    fn events_carry_references_not_content() {
        let access = Access {
            client_id: Some("app".into()),
            fhir_user: Some("Practitioner/dr".into()),
            patient: Some("p1".into()),
            ..Default::default()
        };
        let seed = AuditSeed::new(
            Interaction::Read,
            Some(&access),
            Some("10.0.0.1"),
            "http://x/fhir",
        );
        let parse = |l: Logged| serde_json::from_str::<serde_json::Value>(&l.content).unwrap();
        let ev = parse(seed.event(200, vec![resource_entity("Observation/o/_history/2")]));
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["outcome"], "0");
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "app");
        assert_eq!(ev["agent"][0]["network"]["address"], "10.0.0.1");
        assert_eq!(ev["agent"][1]["who"]["reference"], "Practitioner/dr");
        assert_eq!(ev["agent"][2]["who"]["reference"], "Patient/p1");
        assert_eq!(
            ev["entity"][0]["what"]["reference"],
            "Observation/o/_history/2"
        );
        assert_eq!(ev["entity"][0]["role"]["code"], "4");
        assert_eq!(ev["entity"][1]["what"]["reference"], "Patient/p1");
        assert_eq!(ev["entity"][1]["role"]["code"], "1");
        assert_eq!(
            ev["source"]["observer"]["identifier"]["value"],
            "http://x/fhir"
        );
        assert_eq!(ev["recorded"], ev["meta"]["lastUpdated"]);
        // The patient in context is named once, however the handler named it.
        let named = parse(seed.event(200, vec![patient_entity("p1")]));
        assert_eq!(named["entity"].as_array().unwrap().len(), 1);
        let denied = parse(seed.event(403, vec![]));
        assert_eq!(denied["outcome"], "4");
        assert_eq!(denied["outcomeDesc"], "HTTP 403");
        let search = AuditSeed::new(Interaction::SearchType, None, None, "http://x/fhir");
        let searched = parse(search.event(500, vec![query_entity("Patient?family=x")]));
        assert_eq!(searched["action"], "E");
        assert_eq!(searched["outcome"], "8");
        assert_eq!(searched["agent"][0]["who"]["display"], "unauthenticated");
        assert_eq!(
            searched["entity"][0]["query"],
            STANDARD.encode("Patient?family=x")
        );
        assert!(searched["entity"][0].get("what").is_none());
        for i in [
            Interaction::Vread,
            Interaction::HistoryType,
            Interaction::Batch,
        ] {
            let e = parse(AuditSeed::new(i, None, None, "http://x/fhir").event(200, vec![]));
            assert_eq!(e["subtype"][0]["code"], i.code());
            assert_eq!(e["subtype"][0]["display"], i.code());
        }
        let login = parse(AuditSeed::login("app", None, "http://x/fhir").event(401, vec![]));
        assert_eq!(login["type"]["code"], "110114");
        assert_eq!(login["subtype"][0]["code"], "110122");
        assert_eq!(login["action"], "E");
        assert!(login.get("entity").is_none());
        for e in [&ev, &named, &denied, &searched, &login] {
            assert_eq!(e["resourceType"], "AuditEvent");
            assert_eq!(e["meta"]["versionId"], "1");
            crate::fhir::validate_resource(e).unwrap();
        }
    }
}
