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
    // The first five segments are all the patterns below look at (no allocation: every request
    // passes here).
    let mut first = [""; 5];
    let mut n = 0;
    for seg in path.trim_start_matches("/fhir").split('/') {
        if seg.starts_with('$') {
            return (Interaction::Operation, None);
        }
        if !seg.is_empty() {
            if let Some(slot) = first.get_mut(n) {
                *slot = seg;
            }
            n += 1;
        }
    }
    let segs = &first[..n.min(first.len())];
    let ty = |s: &str| crate::fhir::is_enabled(s);
    use Interaction as I;
    let result = match (method, segs) {
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
        let mut json = Json::with_capacity(2048);
        json.raw(r#"{"resourceType":"AuditEvent","id":"#);
        json.str(&id);
        json.raw(r#","meta":{"versionId":"1","lastUpdated":"#);
        json.str(&instant);
        json.raw(r#"},"type":"#);
        json.raw(ty.json());
        json.raw(r#","subtype":["#);
        json.raw(subtype.json());
        json.raw(r#"],"action":"#);
        json.str(action);
        json.raw(r#","recorded":"#);
        json.str(&instant);
        json.raw(r#","outcome":"#);
        json.str(outcome);
        if let Some(desc) = &outcome_desc {
            json.raw(r#","outcomeDesc":"#);
            json.str(desc);
        }
        json.raw(r#","agent":["#);
        let client = match &self.client {
            Client::Unauthenticated => Who::Display("unauthenticated"),
            Client::Anonymous => Who::Display("anonymous (authorization disabled)"),
            Client::Id(id) => Who::Identifier(id),
        };
        json.agent(
            coding!(DCM, "110153", "Source Role ID"),
            client,
            true,
            self.address.as_deref(),
        );
        if let Some(user) = &self.fhir_user {
            json.raw(",");
            json.agent(
                coding!(PARTICIPATION, "IRCP", "information recipient"),
                Who::Reference(user),
                true,
                None,
            );
        }
        if let Some(p) = &self.patient {
            json.raw(",");
            json.agent(
                coding!(ROLE_CLASS, "PAT", "patient"),
                Who::Reference(p),
                false,
                None,
            );
        }
        json.raw(r#"],"source":{"site":"#);
        json.str(&self.base_url);
        json.raw(concat!(
            r#","observer":{"display":"Cairn FHIR server","#,
            r#""identifier":{"system":"urn:ietf:rfc:3986","value":"#
        ));
        json.str(&self.base_url);
        json.raw(r#"}},"type":["#);
        json.raw(coding!(SOURCE_TYPE, "4", "Application Server").json());
        json.raw("]}");
        for (i, entity) in entities.iter().enumerate() {
            json.raw(if i == 0 { r#","entity":["# } else { "," });
            json.entity(entity);
        }
        if !entities.is_empty() {
            json.raw("]");
        }
        json.raw("}");
        let content = json.finish();
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

/// An AuditEvent's JSON, written in one pass: the keys and the constant parts as literal text,
/// the Codings from their `coding!` statics, and every variable string escaped by serde_json. A
/// read's event is about 1.5 KB, most of it constant; serializing it through serde's derived
/// impls escaped each of its 40-odd keys on every request.
struct Json(String);

/// Who an agent is: a Reference with one of its elements.
enum Who<'a> {
    Display(&'static str),
    /// A client id (`{"identifier": {"system": "urn:cairn:client-id", "value": …}}`).
    Identifier(&'a str),
    Reference(&'a str),
}

impl Json {
    fn with_capacity(n: usize) -> Json {
        Json(String::with_capacity(n))
    }

    /// JSON text as it is.
    fn raw(&mut self, text: &str) {
        self.0.push_str(text);
    }

    /// A JSON string of `value`. Most values (ids, instants, references, URLs) hold nothing that
    /// JSON escapes, the control characters, `"` and `\`, and are quoted as they are; serde_json
    /// escapes the others.
    fn str(&mut self, value: &str) {
        // A fold rather than `all`: no early exit, so the compiler checks many bytes at a time.
        let plain = !value.bytes().fold(false, |esc, b| {
            esc | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.0.push('"');
            self.0.push_str(value);
            self.0.push('"');
        } else {
            // Serializing a string cannot fail.
            self.0
                .push_str(&serde_json::to_string(value).unwrap_or_default());
        }
    }

    fn agent(&mut self, role: Coding, who: Who<'_>, requestor: bool, network: Option<&str>) {
        self.raw(r#"{"type":{"coding":["#);
        self.raw(role.json());
        self.raw(r#"]},"who":"#);
        match who {
            Who::Display(text) => {
                self.raw(r#"{"display":"#);
                self.str(text);
            }
            Who::Identifier(id) => {
                self.raw(r#"{"identifier":{"system":"urn:cairn:client-id","value":"#);
                self.str(id);
                self.raw("}");
            }
            Who::Reference(reference) => {
                self.raw(r#"{"reference":"#);
                self.str(reference);
            }
        }
        self.raw(if requestor {
            r#"},"requestor":true"#
        } else {
            r#"},"requestor":false"#
        });
        if let Some(address) = network {
            self.raw(r#","network":{"address":"#);
            self.str(address);
            self.raw(r#","type":"2"}"#);
        }
        self.raw("}");
    }

    fn entity(&mut self, entity: &Entity) {
        let (what, ty, role, query) = match entity {
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
        self.raw("{");
        if let Some(reference) = what {
            self.raw(r#""what":{"reference":"#);
            self.str(reference);
            self.raw("},");
        }
        self.raw(r#""type":"#);
        self.raw(ty.json());
        self.raw(r#","role":"#);
        self.raw(role.json());
        if let Some(query) = query {
            self.raw(r#","query":"#);
            self.str(query);
        }
        self.raw("}");
    }

    fn finish(self) -> String {
        self.0
    }
}

/// A Coding of fixed text, serialized once: every event repeats a few of them (see `coding!`).
#[derive(Clone, Copy)]
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

    fn json(self) -> &'static str {
        self.0.get()
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
        // Past five segments, only the type counts.
        assert_eq!(
            i("GET", "/fhir/Patient/1/a/b/c/d/e"),
            (Interaction::Read, None)
        );
        assert_eq!(
            i("GET", "/fhir/Patient/1/a/b/c/$x").0,
            Interaction::Operation
        );
        assert_eq!(i("GET", "/fhir/Nope/1/a/b/c/d").0, Interaction::Operation);
    }

    /// The whole event, key for key, including strings that need escaping.
    #[test]
    fn events_are_written_whole_and_escaped() {
        let access = Access {
            client_id: Some("app \"one\"\\\t".into()),
            fhir_user: Some("Practitioner/dr".into()),
            patient: Some("p1".into()),
            ..Default::default()
        };
        let seed = AuditSeed::new(
            Interaction::SearchType,
            Some(&access),
            Some("10.0.0.1"),
            "http://x/fhir",
        );
        let logged = seed.event(
            403,
            vec![
                resource_entity("Observation/o/_history/2"),
                query_entity("Observation?code=a\tb"),
            ],
        );
        let ev: serde_json::Value = serde_json::from_str(&logged.content).unwrap();
        let instant = ev["recorded"].as_str().unwrap().to_string();
        let coding = |system: &str, code: &str, display: &str| serde_json::json!({"system": system, "code": code, "display": display});
        let expected = serde_json::json!({
            "resourceType": "AuditEvent",
            "id": logged.id,
            "meta": {"versionId": "1", "lastUpdated": instant},
            "type": coding(EVENT_TYPE, "rest", "RESTful Operation"),
            "subtype": [coding(INTERACTION, "search-type", "search-type")],
            "action": "E",
            "recorded": instant,
            "outcome": "4",
            "outcomeDesc": "HTTP 403",
            "agent": [
                {
                    "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
                    "who": {"identifier": {"system": "urn:cairn:client-id",
                        "value": "app \"one\"\\\t"}},
                    "requestor": true,
                    "network": {"address": "10.0.0.1", "type": "2"}
                },
                {
                    "type": {"coding": [coding(PARTICIPATION, "IRCP", "information recipient")]},
                    "who": {"reference": "Practitioner/dr"},
                    "requestor": true
                },
                {
                    "type": {"coding": [coding(ROLE_CLASS, "PAT", "patient")]},
                    "who": {"reference": "Patient/p1"},
                    "requestor": false
                }
            ],
            "source": {
                "site": "http://x/fhir",
                "observer": {
                    "display": "Cairn FHIR server",
                    "identifier": {"system": "urn:ietf:rfc:3986", "value": "http://x/fhir"}
                },
                "type": [coding(SOURCE_TYPE, "4", "Application Server")]
            },
            "entity": [
                {
                    "what": {"reference": "Observation/o/_history/2"},
                    "type": coding(ENTITY_TYPE, "2", "System Object"),
                    "role": coding(OBJECT_ROLE, "4", "Domain Resource")
                },
                {
                    "type": coding(ENTITY_TYPE, "2", "System Object"),
                    "role": coding(OBJECT_ROLE, "24", "Query"),
                    "query": STANDARD.encode("Observation?code=a\tb")
                },
                {
                    "what": {"reference": "Patient/p1"},
                    "type": coding(ENTITY_TYPE, "1", "Person"),
                    "role": coding(OBJECT_ROLE, "1", "Patient")
                }
            ]
        });
        assert_eq!(ev, expected);
        assert_eq!(
            logged.hash,
            super::super::chain::event_hash(&logged.content)
        );
        crate::fhir::validate_resource(&ev).unwrap();
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
