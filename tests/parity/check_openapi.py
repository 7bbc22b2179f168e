#!/usr/bin/python3
"""Checks schema/openapi.json against the API that tokenlabd implements.

Usage: check_openapi.py --bin TOKENLABD [REPO_ROOT]   (default root: two folders above this file)

Checks: the document is JSON with openapi "3.1.0"; every operation has an
operationId (unique), a summary, a description and responses; every $ref
resolves inside the document; the (method, path) pairs are exactly the routes
of the daemon's one route table (server/api/route_table.c), as `TOKENLABD routes
--json` prints it; the operations whose
effective security names bearerAuth are exactly the "token" (TLD_AUTH_TOKEN) routes,
which also document 401 and 403; every {param} of a path is declared as a
path parameter; components/schemas/JobSpec equals schema/jobspec.schema.json
and components/schemas/AnnotateSpec equals schema/annotatespec.schema.json
(each without its $schema and $id). Standard library only. Prints one line per
check and a final "N passed, M failed"; exits 0 only when nothing failed.
"""
import json
import os
import re
import subprocess
import sys

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print("PASS %s" % name)
        else:
            self.failed += 1
            print("FAIL %s%s" % (name, ": " + detail if detail else ""))
        return ok


def read_route_table(binary):
    """The daemon's route table from `BINARY routes --json`: a list of (METHOD, path, auth)."""
    out = subprocess.run([binary, "routes", "--json"], check=True, capture_output=True, timeout=60).stdout
    doc = json.loads(out.decode("utf-8"))
    routes = []
    for r in doc["routes"]:
        if r.get("auth") not in ("public", "token"):
            raise ValueError("route %s %s has an unknown auth %r" % (r.get("method"), r.get("path"), r.get("auth")))
        routes.append((str(r["method"]).upper(), r["path"], r["auth"]))
    return routes


def resolve_pointer(doc, pointer):
    """Resolves a JSON pointer ("/a/b") in doc; raises KeyError/IndexError/ValueError when it does not."""
    node = doc
    if pointer == "":
        return node
    if not pointer.startswith("/"):
        raise ValueError("not a JSON pointer")
    for raw in pointer[1:].split("/"):
        tok = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(tok)]
        elif isinstance(node, dict):
            node = node[tok]
        else:
            raise KeyError(tok)
    return node


def collect_refs(node, where, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out.append((where, v))
            else:
                collect_refs(v, where + "/" + str(k).replace("~", "~0").replace("/", "~1"), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            collect_refs(v, "%s/%d" % (where, i), out)


def is_bearer(requirements):
    return any(isinstance(req, dict) and "bearerAuth" in req for req in (requirements or []))


def main():
    args = sys.argv[1:]
    binary = None
    if "--bin" in args:
        k = args.index("--bin")
        binary = args[k + 1] if k + 1 < len(args) else None
        del args[k:k + 2]
    root = args[0] if args else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    c = Checker()
    doc_path = os.path.join(root, "schema", "openapi.json")
    jobspec_path = os.path.join(root, "schema", "jobspec.schema.json")

    doc = None
    try:
        with open(doc_path, encoding="utf-8") as f:
            doc = json.load(f)
        c.check("openapi.json is valid JSON", isinstance(doc, dict), "the top level is not an object")
    except (OSError, ValueError) as e:
        c.check("openapi.json is valid JSON", False, str(e))
    if not isinstance(doc, dict):
        print("%d passed, %d failed" % (c.passed, c.failed))
        return 1

    c.check('openapi is "3.1.0"', doc.get("openapi") == "3.1.0", "found %r" % (doc.get("openapi"),))
    info = doc.get("info")
    c.check("info has title and version", isinstance(info, dict) and bool(info.get("title")) and bool(info.get("version")))

    # ---- operations ----
    ops = {}  # (METHOD, path) -> operation
    paths = doc.get("paths")
    c.check("paths is an object", isinstance(paths, dict))
    path_params = {}
    for path, item in (paths or {}).items():
        if not isinstance(item, dict):
            continue
        path_params[path] = item.get("parameters", [])
        for m in METHODS:
            if m in item:
                ops[(m.upper(), path)] = item[m]

    missing_id = sorted("%s %s" % k for k, op in ops.items() if not (isinstance(op, dict) and op.get("operationId")))
    c.check("every operation has an operationId", not missing_id, ", ".join(missing_id))
    ids = [op.get("operationId") for op in ops.values() if isinstance(op, dict) and op.get("operationId")]
    dups = sorted(set(i for i in ids if ids.count(i) > 1))
    c.check("operationIds are unique", not dups, ", ".join(dups))
    missing_resp = sorted("%s %s" % k for k, op in ops.items()
                          if not (isinstance(op, dict) and isinstance(op.get("responses"), dict) and op["responses"]))
    c.check("every operation has responses", not missing_resp, ", ".join(missing_resp))
    missing_text = sorted("%s %s" % k for k, op in ops.items()
                          if not (isinstance(op, dict) and op.get("summary") and op.get("description")))
    c.check("every operation has a summary and a description", not missing_text, ", ".join(missing_text))

    # ---- $refs ----
    refs = []
    collect_refs(doc, "#", refs)
    bad = []
    for where, r in refs:
        if not r.startswith("#"):
            bad.append("%s -> %s (not local)" % (where, r))
            continue
        try:
            resolve_pointer(doc, r[1:])
        except (KeyError, IndexError, ValueError, TypeError):
            bad.append("%s -> %s" % (where, r))
    c.check("every $ref resolves (%d refs)" % len(refs), not bad and bool(refs), "; ".join(bad[:10]) or "no $ref at all")

    # ---- path parameters ----
    undeclared = []
    for (method, path), op in ops.items():
        declared = set()
        for p in list(path_params.get(path) or []) + list((op.get("parameters") if isinstance(op, dict) else None) or []):
            if isinstance(p, dict) and "$ref" in p:
                try:
                    p = resolve_pointer(doc, p["$ref"][1:])
                except (KeyError, IndexError, ValueError, TypeError):
                    continue
            if isinstance(p, dict) and p.get("in") == "path" and p.get("required") is True:
                declared.add(p.get("name"))
        for name in re.findall(r"\{([^}]+)\}", path):
            if name not in declared:
                undeclared.append("%s %s {%s}" % (method, path, name))
    c.check("every path template parameter is declared", not undeclared, ", ".join(undeclared))

    # ---- route table parity ----
    routes = None
    if not binary:
        c.check("the route table is readable", False, "no --bin TOKENLABD given")
    else:
        try:
            routes = read_route_table(binary)
        except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as e:
            c.check("the route table is readable (%s routes --json)" % binary, False, str(e))
    if routes is not None:
        c.check("route table read (%d routes)" % len(routes), len(routes) > 0, "no route found")
        want = set((m, p) for m, p, _ in routes)
        have = set(ops)
        only_c = sorted("%s %s" % k for k in want - have)
        only_doc = sorted("%s %s" % k for k in have - want)
        c.check("(method, path) pairs equal the route table",
                want == have and len(want) == len(routes),
                "undocumented: [%s]; not in the route table: [%s]%s" % (
                    ", ".join(only_c), ", ".join(only_doc),
                    "; duplicate routes in the route table" if len(want) != len(routes) else ""))

        token = set((m, p) for m, p, a in routes if a == "token")
        global_sec = doc.get("security", [])
        bearer_ops = set(k for k, op in ops.items()
                         if isinstance(op, dict) and is_bearer(op.get("security", global_sec)))
        c.check("bearerAuth operations are exactly the token (TLD_AUTH_TOKEN) routes",
                bearer_ops == token,
                "bearer but public in the route table: [%s]; token routes without bearer: [%s]" % (
                    ", ".join(sorted("%s %s" % k for k in bearer_ops - token)),
                    ", ".join(sorted("%s %s" % k for k in token - bearer_ops))))
        no_auth_resp = sorted("%s %s" % k for k in token if k in ops and isinstance(ops[k], dict)
                              and not {"401", "403"} <= set(ops[k].get("responses", {})))
        c.check("token (TLD_AUTH_TOKEN) operations document 401 and 403", not no_auth_resp, ", ".join(no_auth_resp))

    schemes = ((doc.get("components") or {}).get("securitySchemes") or {})
    bearer = schemes.get("bearerAuth")
    c.check("securitySchemes.bearerAuth is http bearer",
            isinstance(bearer, dict) and bearer.get("type") == "http" and str(bearer.get("scheme", "")).lower() == "bearer")

    # ---- JobSpec and AnnotateSpec parity ----
    for schema_name, spec_path in (("JobSpec", jobspec_path),
                                   ("AnnotateSpec", os.path.join(root, "schema", "annotatespec.schema.json"))):
        spec_file = "schema/" + os.path.basename(spec_path)
        try:
            with open(spec_path, encoding="utf-8") as f:
                src = json.load(f)
            want_spec = {k: v for k, v in src.items() if k not in ("$schema", "$id")}
            have_spec = ((doc.get("components") or {}).get("schemas") or {}).get(schema_name)
            if isinstance(have_spec, dict):
                have_cmp = dict(have_spec)
                # The description may add a note after the copied text.
                if isinstance(have_cmp.get("description"), str) and isinstance(want_spec.get("description"), str) \
                        and have_cmp["description"].startswith(want_spec["description"]):
                    have_cmp["description"] = want_spec["description"]
                diff = sorted(k for k in set(want_spec) | set(have_cmp) if want_spec.get(k) != have_cmp.get(k))
                c.check("components.schemas.%s equals %s" % (schema_name, spec_file), not diff,
                        "differs in: " + ", ".join(diff))
            else:
                c.check("components.schemas.%s equals %s" % (schema_name, spec_file), False,
                        "no %s schema" % schema_name)
        except (OSError, ValueError) as e:
            c.check("%s is readable" % spec_file, False, str(e))

    print("%d passed, %d failed" % (c.passed, c.failed))
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
