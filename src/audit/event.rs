//! The AuditEvent of one interaction, in the shape of IHE Basic Audit Log Patterns (BALP, RESTful
//! events): type `rest`, the interaction as subtype, action C/R/U/D/E, the agents (client, user,
//! patient in context, with the network address), this server as source observer, and entities
//! (each resource touched with its version, the patient concerned, the query of a search). No
//! clinical content: references and the query string only.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::auth::Access;
use crate::fhir::format_instant;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

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
    agents: Vec<Value>,
    source: Value,
    /// The patient in the token's context, if any (an entity of every event of the request).
    patient: Option<String>,
    /// A token request (DICOM User Authentication / Login) rather than a RESTful interaction.
    login: bool,
}

impl AuditSeed {
    pub fn new(
        interaction: Interaction,
        access: Option<&Access>,
        address: Option<&str>,
        base_url: &str,
    ) -> AuditSeed {
        let mut client = json!({
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "requestor": true,
        });
        client["who"] = match access {
            Some(a) if a.unrestricted && a.client_id.is_none() => {
                json!({"display": "anonymous (authorization disabled)"})
            }
            Some(a) => json!({"identifier": {"system": "urn:cairn:client-id", "value": a.who()}}),
            None => json!({"display": "unauthenticated"}),
        };
        if let Some(addr) = address {
            client["network"] = json!({"address": addr, "type": "2"});
        }
        let mut agents = vec![client];
        if let Some(user) = access.and_then(|a| a.fhir_user.as_deref()) {
            agents.push(json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP", "display": "information recipient"}]},
                "who": {"reference": user},
                "requestor": true,
            }));
        }
        let patient = access.and_then(|a| a.patient.clone());
        if let Some(p) = &patient {
            agents.push(json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                    "code": "PAT", "display": "patient"}]},
                "who": {"reference": format!("Patient/{p}")},
                "requestor": false,
            }));
        }
        AuditSeed {
            interaction,
            agents,
            source: json!({
                "site": base_url,
                "observer": {"display": "Cairn FHIR server",
                    "identifier": {"system": "urn:ietf:rfc:3986", "value": base_url}},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4", "display": "Application Server"}],
            }),
            patient,
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

    /// The AuditEvent for an HTTP `status` with these entities (the token's patient is added).
    pub fn event(&self, status: u16, mut entities: Vec<Value>) -> Value {
        if let Some(p) = &self.patient {
            let r = format!("Patient/{p}");
            if !entities
                .iter()
                .any(|e| e["what"]["reference"] == r.as_str())
            {
                entities.push(patient_entity(p));
            }
        }
        let (outcome, desc) = match status {
            200..=399 => ("0", None),
            400..=499 => ("4", Some(status)),
            _ => ("8", Some(status)),
        };
        let mut ev = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                "code": self.interaction.code(), "display": self.interaction.code()}],
            "action": self.interaction.action(),
            "recorded": format_instant(crate::rest::now_micros()),
            "outcome": outcome,
        });
        if let Some(s) = desc {
            ev["outcomeDesc"] = json!(format!("HTTP {s}"));
        }
        if self.login {
            ev["type"] = json!({"system": DCM, "code": "110114", "display": "User Authentication"});
            ev["subtype"] = json!([{"system": DCM, "code": "110122", "display": "Login"}]);
            ev["action"] = json!("E");
        }
        ev["agent"] = json!(self.agents);
        ev["source"] = self.source.clone();
        if !entities.is_empty() {
            ev["entity"] = json!(entities);
        }
        ev
    }
}

/// A resource the interaction touched (`Type/id` or `Type/id/_history/v`).
pub fn resource_entity(reference: &str) -> Value {
    json!({
        "what": {"reference": reference},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
    })
}

/// The patient the interaction concerns.
pub fn patient_entity(id: &str) -> Value {
    json!({
        "what": {"reference": format!("Patient/{id}")},
        "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
        "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
    })
}

/// A search's query (base64, as BALP and R4 `entity.query` want), e.g. `Patient?family=x`.
pub fn query_entity(query: &str) -> Value {
    json!({
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
        "query": STANDARD.encode(query),
    })
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
        let ev = seed.event(200, vec![resource_entity("Observation/o/_history/2")]);
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["outcome"], "0");
        assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "app");
        assert_eq!(ev["agent"][0]["network"]["address"], "10.0.0.1");
        assert_eq!(ev["agent"][1]["who"]["reference"], "Practitioner/dr");
        assert_eq!(ev["entity"][1]["what"]["reference"], "Patient/p1");
        let denied = seed.event(403, vec![]);
        assert_eq!(denied["outcome"], "4");
        crate::fhir::validate_resource(&ev).unwrap();
        crate::fhir::validate_resource(&denied).unwrap();
    }
}
