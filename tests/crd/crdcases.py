"""The Function CRD (charts/stoke/files/functions.stoke.dev.yaml) against the
spec parser (common/spec.c), shared by test_crd_schema.py (no cluster) and
test_crd_apiserver.py (the real kube-apiserver).

The field tree comes from the parser itself (tests/crd/spec_tool fields, which
walks spec.c's own tables), so a field added to the parser and not to the
schema, or the other way round, fails here; and the documents judged by both
are generated from that tree: for every field its bounds, one past them, bad
syntax and the wrong type.
"""
import json
import os
import re
import subprocess
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CRD_FILE = os.path.join(ROOT, "charts", "stoke", "files", "functions.stoke.dev.yaml")
SPECS = os.path.join(ROOT, "tests", "specs")

DURATION_PATTERN = "^([0-9]+(ms|s|m|h))+$"
MEMORY_PATTERN = r"^[0-9]+((\.[0-9]{1,3})?(Ki|Mi|Gi|Ti|k|K|M|G|T))?$"
CPU_PATTERN = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$"
PORT_RE = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
ADDRESS_PATTERN = r"^(unix:/[!-~]*|([-.A-Za-z0-9]+|\[[.:0-9A-Fa-f]+\]):" + PORT_RE + ")$"
CRON_PATTERN = (r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
                r"|[-0-9A-Za-z*?,/]+( +[-0-9A-Za-z*?,/]+){4})$")
ZONE_PATTERN = r"^[A-Za-z0-9_+]([-A-Za-z0-9_+]*)(/[A-Za-z0-9_+][-A-Za-z0-9_+]*)*$"


def build_dir():
    d = os.environ.get("STOKE_BUILD_DIR") or os.path.join(ROOT, "build")
    tool = os.path.join(d, "tests", "spec_tool")
    if not os.access(tool, os.X_OK):
        raise RuntimeError(f"no spec_tool at {tool}: build first (cmake --build {d})")
    return d


def spec_tool():
    return os.path.join(build_dir(), "tests", "spec_tool")


def parser_fields():
    """The parser's field tree: a list of dicts (path, type, min, max, required, values)."""
    out = subprocess.run([spec_tool(), "fields"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def load_crd():
    with open(CRD_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def crd_schema(crd):
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def api_version(crd):
    (version,) = crd["spec"]["versions"]
    return f'{crd["spec"]["group"]}/{version["name"]}'


def parser_verdicts(docs):
    """Each document (a dict) through the parser: a list of (ok, field, error)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, doc in enumerate(docs):
            p = os.path.join(tmp, f"{i}.yaml")
            with open(p, "w", encoding="utf-8") as f:
                yaml.safe_dump(doc, f, sort_keys=False, allow_unicode=True)
            paths.append(p)
        out = subprocess.run([spec_tool(), "check", *paths], check=True, capture_output=True,
                             text=True)
    res = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(res) == len(docs), out.stdout
    return [(r["ok"], r.get("field", ""), r.get("error", "")) for r in res]


# --- durations, as the parser writes its bounds (spec.c format_ms) -----------

def fmt_ms(ms):
    for unit, n in (("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms and ms % n == 0:
            return f"{ms // n}{unit}"
    return "0s" if ms == 0 else f"{ms}ms"


# --- the documents -----------------------------------------------------------

class Case:
    """One document and what should decide it.

    `cel`: refused only by a CEL rule (x-kubernetes-validations), which the
    offline check cannot run; `known`: a YAML typing difference that the
    parser and the schema are known to judge differently (parser, schema)."""

    def __init__(self, what, doc, valid, cel=False, known=None):
        self.what, self.doc, self.valid, self.cel, self.known = what, doc, valid, cel, known

    def __repr__(self):
        return f"<case {self.what}>"


def base_doc(apiver, name="case"):
    return {"apiVersion": apiver, "kind": "Function", "metadata": {"name": name},
            "spec": {"image": "stoke-hello:1"}}


# A list field's path (spec.triggers) and a valid item of it: a value for
# a field inside an item is set in this item, the list's only one.
LIST_ITEMS = {
    "spec.triggers": {"name": "t", "redis": {"address": "127.0.0.1:6379", "stream": "s"}},
    "spec.schedules": {"name": "s", "schedule": "@hourly"},
}


def with_value(apiver, path, value):
    """The base document with `path` (dotted, under spec or metadata) set;
    a path inside a list's item sets it in the one item of that list."""
    doc = base_doc(apiver)
    parts = path.split(".")
    node = doc
    for i, p in enumerate(parts[:-1]):
        lst = ".".join(parts[:i + 1])
        if lst in LIST_ITEMS:
            items = node.setdefault(p, [json.loads(json.dumps(LIST_ITEMS[lst]))])
            node = items[0]
        else:
            node = node.setdefault(p, {})
    node[parts[-1]] = value
    return doc


def values_for(f):
    """(what, value, valid, cel) for one leaf field of the parser's tree."""
    t, lo, hi = f["type"], f["min"], f["max"]
    out = []
    if t == "uint":
        out += [("min", lo, True, False), ("max", hi, True, False),
                ("max + 1", hi + 1, False, False), ("a quoted number", str(lo), False, False),
                ("a fraction", lo + 0.5, False, False), ("a mapping", {"a": 1}, False, False)]
        if lo > 0:
            out.append(("min - 1", lo - 1, False, False))
        else:
            out.append(("negative", -1, False, False))
    elif t == "duration":
        out += [("min", fmt_ms(lo), True, False), ("max", fmt_ms(hi), True, False),
                ("max in ms", f"{hi}ms", True, False),
                ("units in any order", "1s" + fmt_ms(lo) if lo + 1000 <= hi else fmt_ms(hi),
                 True, False),
                ("max + 1ms", f"{hi + 1}ms", False, True),
                ("overflow", "99999999999999999999h", False, True),
                ("no unit", "30", False, False), ("a fraction", "1.5s", False, False),
                ("negative", "-1s", False, False), ("microseconds", "10us", False, False),
                ("a number", 30, False, False), ("spaces", "1m 30s", False, False)]
        if lo > 0:
            out.append(("min - 1ms", f"{lo - 1}ms", False, True))
    elif t == "memory":
        out += [("min", "6Mi", True, False), ("min in bytes", lo, True, False),
                ("min as decimal bytes", "6291456", True, False),
                ("fraction", "1.5Gi", True, False), ("K", "8000K", True, False),
                ("k", "8000k", True, False), ("Ti", "1Ti", True, False),
                ("below min", "5Mi", False, True), ("below min in bytes", lo - 1, False, True),
                ("over 2^64", "99999999999T", False, True),
                ("fraction without unit", "1.5", False, False),
                ("four decimals", "1.2345Gi", False, False),
                ("unknown unit", "12Xi", False, False), ("negative", "-1Mi", False, False),
                ("a mapping", {"a": 1}, False, False)]
    elif t == "cpu":
        out += [("min", "1m", True, False), ("max", f"{hi // 1000}", True, False),
                ("max in millicores", f"{hi}m", True, False), ("half", "0.5", True, False),
                ("cores as a number", 2, True, False), ("three decimals", "1.125", True, False),
                ("0m", "0m", False, True), ("0 cores", 0, False, True),
                ("over max", f"{hi // 1000 + 1}", False, True),
                ("over max as a number", hi // 1000 + 1, False, True),
                ("four decimals", "1.2345", False, False), ("fractional millicores", "1.5m",
                                                            False, False),
                ("space", "5 m", False, False), ("negative", "-1", False, False)]
    elif t == "string":
        for v in f["values"]:
            out.append((f"value {v}", v, True, False))
        out += [("another value", "sleep", False, False), ("a number", 1, False, False)]
        if f["values"][0].capitalize() != f["values"][0]:
            out.append(("another case", f["values"][0].capitalize(), False, False))
    elif t in ("image", "path"):
        first = "/" if t == "path" else "a"
        out += [("shortest", first, True, False),
                ("longest", first + "x" * (hi - 1), True, False),
                ("too long", first + "x" * hi, False, False),
                ("space", first + "a b", False, False), ("non-ASCII", first + "é", False, False),
                ("a mapping", {"a": 1}, False, False)]
        if t == "image":
            out.append(("empty", "", False, False))
        else:
            out.append(("relative", "ready", False, False))
    elif t == "name":
        out += [("shortest", "a", True, False), ("longest", "a" * hi, True, False),
                ("with digits and dashes", "a-1-b", True, False),
                ("too long", "a" * (hi + 1), False, False), ("upper case", "Abc", False, False),
                ("ends with a dash", "ab-", False, False),
                ("starts with a digit", "1ab", False, False),
                ("dot", "a.b", False, False)]
    elif t == "address":
        out += [("host:port", "127.0.0.1:6379", True, False),
                ("a name", "redis.default.svc:1", True, False),
                ("IPv6", "[::1]:65535", True, False), ("unix", "unix:/run/r.sock", True, False),
                ("longest", "h" * (hi - 2) + ":1", True, False),
                ("too long", "h" * (hi - 1) + ":1", False, False),
                ("no port", "h", False, False), ("port 0", "h:0", False, False),
                ("port 65536", "h:65536", False, False), ("a leading zero", "h:01", False, False),
                ("IPv6 without brackets", "::1:80", False, False),
                ("unix relative", "unix:r", False, False), ("space", "h :1", False, False),
                ("a number", 6379, False, False)]
    elif t == "cron":
        # What only the parser can judge (a value out of its field's range,
        # a day that never comes) is a known difference: the schema checks
        # the shape, the controller refuses the rest (docs/kubernetes.md).
        out += [("every minute", "* * * * *", True, False),
                ("steps, ranges and names", "*/15 9-17 * jan-jun mon-fri", True, False),
                ("a macro", "@daily", True, False), ("another macro", "@annually", True, False),
                ("four fields", "* * * *", False, False),
                ("six fields", "0 * * * * *", False, False),
                ("an unknown macro", "@sometimes", False, False),
                ("empty", "", False, False), ("a number", 5, False, False),
                ("too long", "* * * * " + "0," * ((hi - 7) // 2) + "0", False, False)]
    elif t == "zone":
        out += [("UTC", "UTC", True, False), ("a region", "Europe/Berlin", True, False),
                ("three parts", "America/Argentina/Buenos_Aires", True, False),
                ("a dot dot", "../etc", False, False), ("a space", "Europe/ Berlin", False, False),
                ("too long", "A" * (hi + 1), False, False), ("a number", 1, False, False)]
    elif t == "text":
        out += [("empty", "", True, False), ("JSON", '{"a": [1, "b"]}', True, False),
                ("lines", "a\nb\n", True, False), ("longest", "x" * hi, True, False),
                ("too long", "x" * (hi + 1), False, False), ("a mapping", {"a": 1}, False, False),
                ("a list", ["a"], False, False)]
    elif t == "list":
        item = LIST_ITEMS[f["path"]]
        many = [dict(json.loads(json.dumps(item)), name=f"n{i}") for i in range(hi + 1)]
        out += [("empty", [], True, False), ("one", [item], True, False),
                (f"{hi} items", many[:hi], True, False),
                (f"{hi + 1} items", many, False, False),
                ("a mapping", item, False, False), ("a string", "x", False, False),
                ("an item not a mapping", ["x"], False, False),
                ("a name twice", [item, item], False, True)]
    elif t == "bool":
        out += [("true", True, True, False), ("false", False, True, False),
                ("a string", "true", False, False), ("a number", 1, False, False)]
    elif t == "env":
        out += [("names and values", {"A": "1", "_b": "x y", "C9": 3}, True, False),
                ("null is empty", {"A": None}, True, False),
                (f"{hi} names", {f"V{i}": "x" for i in range(hi)}, True, False),
                (f"{hi + 1} names", {f"V{i}": "x" for i in range(hi + 1)}, False, False),
                ("a bad name", {"1A": "x"}, False, True),
                ("a dash in a name", {"A-B": "x"}, False, True),
                ("PORT", {"PORT": "1"}, False, True),
                ("a mapping value", {"A": {"b": 1}}, False, False),
                ("a list", ["A"], False, False)]
    return out


def cases(apiver):
    """Every case, generated from the parser's tree, for documents of `apiver`."""
    fields = parser_fields()
    out = [Case("minimal", base_doc(apiver), True)]
    for f in fields:
        path, t = f["path"], f["type"]
        if path in ("apiVersion", "kind", "metadata.labels", "metadata.annotations"):
            continue  # Kubernetes' own: its API machinery and ObjectMeta judge them
        if t == "map":
            if path == "metadata":
                continue
            out.append(Case(f"{path}: an unknown field", with_value(apiver, path + ".bogus", 1),
                            False))
            out.append(Case(f"{path}: a string", with_value(apiver, path, "x"), False))
            if path != "spec":
                # empty is valid unless the mapping has required fields
                req = any(c["required"] for c in fields
                          if c["path"].rsplit(".", 1)[0] == path and c["path"] != path)
                out.append(Case(f"{path}: empty", with_value(apiver, path, {}), not req))
            continue
        if t == "strmap":
            continue
        for what, value, valid, cel in values_for(f):
            out.append(Case(f"{path}: {what}", with_value(apiver, path, value), valid, cel))
    # Rules across fields, and required fields.
    nomax = base_doc(apiver)
    del nomax["spec"]["image"]
    out += [
        Case("spec.image missing", nomax, False),
        Case("scale.min over max", with_value(apiver, "spec.scale", {"min": 5, "max": 3}), False,
             cel=True),
        Case("scale.initial over max",
             with_value(apiver, "spec.scale", {"initial": 2, "max": 1}), False, cel=True),
        Case("scale.min over an unbounded max",
             with_value(apiver, "spec.scale", {"min": 5, "max": 0}), True),
        Case("scale.min equal to max", with_value(apiver, "spec.scale", {"min": 3, "max": 3}),
             True),
        Case("scale.initial over min without max",
             with_value(apiver, "spec.scale", {"initial": 7, "min": 2}), True),
    ]
    # YAML typing: the parser reads any scalar as text where it wants text,
    # the API server has JSON types. Known and documented (docs/kubernetes.md).
    out += [
        Case("env: a fraction as a value", with_value(apiver, "spec.env", {"A": 1.5}), True,
             known=(True, False)),
        Case("env: a boolean as a value", with_value(apiver, "spec.env", {"A": True}), True,
             known=(True, False)),
        Case("cpu: a fraction unquoted", with_value(apiver, "spec.resources.cpu", 1.5), True,
             known=(True, False)),
        Case("image: a number", with_value(apiver, "spec.image", 123), True,
             known=(True, False)),
        # Schedules: what the schema's pattern cannot see.
        Case("schedule: a minute out of range",
             with_value(apiver, "spec.schedules.schedule", "61 * * * *"), False,
             known=(False, True)),
        Case("schedule: a day that never comes",
             with_value(apiver, "spec.schedules.schedule", "0 0 30 2 *"), False,
             known=(False, True)),
        Case("timeZone: unknown to tzdata",
             with_value(apiver, "spec.schedules.timeZone", "Mars/Olympus"), False,
             known=(False, True)),
        Case("data: a number", with_value(apiver, "spec.schedules.data", 5), True,
             known=(True, False)),
    ]
    return out


def spec_files():
    """tests/specs/{valid,invalid}/*.yaml: (path, valid)."""
    out = []
    for sub, valid in (("valid", True), ("invalid", False)):
        d = os.path.join(SPECS, sub)
        for n in sorted(os.listdir(d)):
            if n.endswith(".yaml"):
                out.append((os.path.join(d, n), valid))
    return out


# --- the schema without a cluster ---------------------------------------------

def _type_ok(node, v):
    if v is None:
        return bool(node.get("nullable"))
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
    t = node.get("type")
    return {
        "object": lambda: isinstance(v, dict),
        "array": lambda: isinstance(v, list),
        "string": lambda: isinstance(v, str),
        "boolean": lambda: isinstance(v, bool),
        "integer": lambda: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
        None: lambda: True,
    }[t]()


def openapi_errors(node, v, path="", top=True):
    """What the OpenAPI part of a structural schema refuses in `v`, as the
    API server judges it: CEL rules (x-kubernetes-validations) are left out,
    unknown fields are refused (kubectl's strict field validation), and the
    root's apiVersion, kind and metadata beyond the name are the API
    machinery's. The keywords are the ones the CRD uses; any other is an
    error here, so the test cannot silently skip one."""
    known = {"type", "description", "properties", "required", "additionalProperties",
             "x-kubernetes-int-or-string", "nullable", "minimum", "maximum", "minLength",
             "maxLength", "pattern", "enum", "maxProperties", "x-kubernetes-validations",
             "items", "format", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
             "maxItems"}
    unknown = set(node) - known
    if unknown:
        raise ValueError(f"{path}: schema keywords this check does not know: {unknown}")
    if not _type_ok(node, v):
        return [f"{path}: wrong type {type(v).__name__}"]
    if v is None:
        return []
    errs = []
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in node and v < node["minimum"]:
            errs.append(f"{path}: under {node['minimum']}")
        if "maximum" in node and v > node["maximum"]:
            errs.append(f"{path}: over {node['maximum']}")
    if isinstance(v, str):
        if len(v) < node.get("minLength", 0):
            errs.append(f"{path}: shorter than {node['minLength']}")
        if "maxLength" in node and len(v) > node["maxLength"]:
            errs.append(f"{path}: longer than {node['maxLength']}")
        # RE2's $ is the end of the text; Python's would match before a final newline.
        if "pattern" in node and not re.search(node["pattern"].replace("$", r"\Z"), v):
            errs.append(f"{path}: does not match {node['pattern']}")
    if "enum" in node and v not in node["enum"]:
        errs.append(f"{path}: not one of {node['enum']}")
    if isinstance(v, dict):
        if "maxProperties" in node and len(v) > node["maxProperties"]:
            errs.append(f"{path}: more than {node['maxProperties']} entries")
        for r in node.get("required", []):
            if r not in v:
                errs.append(f"{path}.{r}: required")
        props = node.get("properties", {})
        for k, x in v.items():
            p = f"{path}.{k}" if path else k
            if top and k in ("apiVersion", "kind"):
                continue
            if top and k == "metadata" and isinstance(x, dict):
                for m, mv in x.items():
                    if m in props[k].get("properties", {}):
                        errs += openapi_errors(props[k]["properties"][m], mv, f"{p}.{m}", False)
            elif k in props:
                errs += openapi_errors(props[k], x, p, top=False)
            elif isinstance(node.get("additionalProperties"), dict):
                errs += openapi_errors(node["additionalProperties"], x, p, top=False)
            else:
                errs.append(f"{p}: unknown field")
    if isinstance(v, list) and "maxItems" in node and len(v) > node["maxItems"]:
        errs.append(f"{path}: more than {node['maxItems']} items")
    if isinstance(v, list) and "items" in node:
        for i, x in enumerate(v):
            errs += openapi_errors(node["items"], x, f"{path}[{i}]", top=False)
    return errs


def node_at(schema, path):
    """The schema node of a dotted field path, or None."""
    node = schema
    for p in path.split("."):
        if node.get("type") == "array":
            node = node.get("items") or {}
        node = (node.get("properties") or {}).get(p)
        if node is None:
            return None
    return node


def schema_paths(schema, prefix=""):
    """Every field path the schema declares under spec and metadata."""
    out = []
    if schema.get("type") == "array":
        schema = schema.get("items") or {}
    for k, v in (schema.get("properties") or {}).items():
        p = f"{prefix}.{k}" if prefix else k
        out.append(p)
        out += schema_paths(v, p)
    return out


def rules(node):
    return " ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))


