#!/usr/bin/python3
"""Checks schema/openapi.json against the API that server/api/routes.c implements.

Usage: check_openapi.py [REPO_ROOT]   (default: two folders above this file)

Checks: the document is JSON with openapi "3.1.0"; every operation has an
operationId (unique), a summary, a description and responses; every $ref
resolves inside the document; the (method, path) pairs are exactly the routes
of the tld_route_def tables of server/routes*.c, datasets.c and static.c; the operations whose
effective security names bearerAuth are exactly the TLD_AUTH_TOKEN routes,
which also document 401 and 403; every {param} of a path is declared as a
path parameter; components/schemas/JobSpec equals schema/jobspec.schema.json
and components/schemas/AnnotateSpec equals schema/annotatespec.schema.json
(each without its $schema and $id). Standard library only. Prints one line per
check and a final "N passed, M failed"; exits 0 only when nothing failed.
"""
import json
import os
import re
import sys

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ROUTE_RE = re.compile(r'\{\s*"([A-Za-z]+)"\s*,\s*"([^"]+)"\s*,\s*(TLD_AUTH_[A-Z_]+)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)'
                      r'\s*(?:,\s*[A-Za-z0-9_]+\s*)?\}')
# The route tables: tld_route_def arrays in these files (tld_routes_register registers them all).
ROUTE_FILES = ("api/routes.c", "api/routes_models.c", "api/routes_inspect.c", "api/routes_labelmaps.c", "api/datasets.c", "http/static.c")


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


def parse_tables(c_source):
    """Every tld_route_def table of a file: a list of (METHOD, pattern, auth, handler)."""
    out = []
    for m in re.finditer(r"tld_route_def\s+[A-Za-z_][A-Za-z0-9_]*\[\]\s*=\s*\{(.*?)\n\};", c_source, flags=re.S):
        body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
        body = re.sub(r"//[^\n]*", "", body)
        out += [(r.group(1).upper(), r.group(2), r.group(3), r.group(4)) for r in ROUTE_RE.finditer(body)]
    return out


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
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    c = Checker()
    doc_path = os.path.join(root, "schema", "openapi.json")
    routes_path = os.path.join(root, "server", "routes.c")  # ROUTE_FILES are relative to server/
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

    # ---- routes.c parity ----
    routes = None
    try:
        routes = []
        for name in ROUTE_FILES:
            with open(os.path.join(root, "server", name), encoding="utf-8") as f:
                routes += parse_tables(f.read())
    except OSError as e:
        routes = None
        c.check("server/routes*.c are readable", False, str(e))
    if routes is not None:
        c.check("routes.c route table parsed (%d routes)" % len(routes), len(routes) > 0, "no route found")
        want = set((m, p) for m, p, _, _ in routes)
        have = set(ops)
        only_c = sorted("%s %s" % k for k in want - have)
        only_doc = sorted("%s %s" % k for k in have - want)
        c.check("(method, path) pairs equal the routes.c table",
                want == have and len(want) == len(routes),
                "undocumented: [%s]; not in routes.c: [%s]%s" % (
                    ", ".join(only_c), ", ".join(only_doc),
                    "; duplicate routes in routes.c" if len(want) != len(routes) else ""))

        token = set((m, p) for m, p, a, _ in routes if a == "TLD_AUTH_TOKEN")
        global_sec = doc.get("security", [])
        bearer_ops = set(k for k, op in ops.items()
                         if isinstance(op, dict) and is_bearer(op.get("security", global_sec)))
        c.check("bearerAuth operations are exactly the TLD_AUTH_TOKEN routes",
                bearer_ops == token,
                "bearer but public in routes.c: [%s]; TLD_AUTH_TOKEN without bearer: [%s]" % (
                    ", ".join(sorted("%s %s" % k for k in bearer_ops - token)),
                    ", ".join(sorted("%s %s" % k for k in token - bearer_ops))))
        no_auth_resp = sorted("%s %s" % k for k in token if k in ops and isinstance(ops[k], dict)
                              and not {"401", "403"} <= set(ops[k].get("responses", {})))
        c.check("TLD_AUTH_TOKEN operations document 401 and 403", not no_auth_resp, ", ".join(no_auth_resp))

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
