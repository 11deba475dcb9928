#!/usr/bin/env python3
"""Generate src/search/r4-search-parameters.json from the official R4 SearchParameter definitions.

    python3 tools/gen_search_params.py ../shared/fhir/search-parameters.json > src/search/r4-search-parameters.json

Keeps, for each SearchParameter, what the server evaluates: code, url, type, base, expression (only
the `|` alternatives rooted in a type listed in KNOWN), target, and composite components. A test
(tests/search_definitions.rs) checks the file still matches ../shared, so it cannot drift.
"""
import json
import sys

KNOWN = {"CarePlan", "CareTeam", "Condition", "Goal", "Observation", "Patient", "Practitioner",
         "Questionnaire", "QuestionnaireResponse", "RelatedPerson", "Flag", "Task", "AuditEvent",
         "Resource", "DomainResource"}


def split_top(expr):
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def root(part):
    return part.lstrip("(").split(".")[0].split(" ")[0]


bundle = json.load(open(sys.argv[1]))
out = []
for e in bundle["entry"]:
    sp = e["resource"]
    bases = [b for b in sp["base"] if b in KNOWN]
    if not bases:
        continue
    expr = sp.get("expression")
    if expr:
        expr = " | ".join(p for p in split_top(expr) if root(p) in KNOWN)
    item = {"code": sp["code"], "url": sp["url"], "type": sp["type"], "base": bases}
    if expr:
        item["expression"] = expr
    if sp.get("target"):
        item["target"] = sp["target"]
    if sp.get("experimental"):
        item["experimental"] = True
    if sp.get("component"):
        item["component"] = [{"definition": c["definition"], "expression": c["expression"]}
                             for c in sp["component"]]
    out.append(item)
json.dump(out, sys.stdout, indent=0, separators=(",", ":"))
sys.stdout.write("\n")

# src/search/r4-patient-compartment.json: {type: [params]} from ../shared/fhir/compartment-patient.json
# (CompartmentDefinition.resource[].param), for the types in KNOWN that have any.
# src/search/r4-value-sets.json (for :in / :not-in) comes from tools/gen_value_sets.py.
