#!/usr/bin/env python3
"""The Function CRD's schema against the spec parser, without a cluster.

Every field the parser knows (its own tables, through spec_tool) must be in
the schema with the matching type, bounds, pattern, enum and rule, and every
field of the schema must be one the parser knows. Then the documents generated
from the parser's tree (crdcases.py) are judged by the parser and by the
schema's OpenAPI part (jsonschema); what only a CEL rule decides is judged by
the real API server in test_crd_apiserver.py (ctest label k8s).

Run: STOKE_BUILD_DIR=build python3 tests/crd/test_crd_schema.py
"""
import json
import os
import subprocess
import sys
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crdcases as cc  # noqa: E402


class TestFields(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.crd = cc.load_crd()
        cls.schema = cc.crd_schema(cls.crd)
        cls.fields = cc.parser_fields()

    def test_names(self):
        names = self.crd["spec"]["names"]
        self.assertEqual(self.crd["metadata"]["name"],
                         f'{names["plural"]}.{self.crd["spec"]["group"]}')
        self.assertEqual(names["kind"], "Function")
        self.assertIn("fn", names["shortNames"])
        self.assertEqual(self.crd["spec"]["scope"], "Namespaced")
        (version,) = self.crd["spec"]["versions"]
        self.assertEqual(version["subresources"], {"status": {}})
        cols = [c["name"] for c in version["additionalPrinterColumns"]]
        for c in ("Ready", "Desired", "Image", "URL", "Age"):
            self.assertIn(c, cols)

    def test_api_version(self):
        (f,) = [f for f in self.fields if f["path"] == "apiVersion"]
        self.assertEqual(f["values"][0], cc.api_version(self.crd),
                         "the parser's first apiVersion is the CRD's group/version")
        (k,) = [f for f in self.fields if f["path"] == "kind"]
        self.assertEqual(k["values"], [self.crd["spec"]["names"]["kind"]])

    def test_every_parser_field_in_schema(self):
        checked = 0
        for f in self.fields:
            path, t, lo, hi = f["path"], f["type"], f["min"], f["max"]
            if path in ("apiVersion", "kind", "metadata.labels", "metadata.annotations"):
                continue  # the API machinery's and ObjectMeta's
            node = cc.node_at(self.schema, path)
            with self.subTest(field=path):
                self.assertIsNotNone(node, f"{path} ({t}) is not in the CRD's schema")
                rules = cc.rules(node)
                if t == "uint":
                    self.assertEqual(node.get("type"), "integer")
                    self.assertEqual((node.get("minimum"), node.get("maximum")), (lo, hi))
                elif t == "duration":
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual(node.get("pattern"), cc.DURATION_PATTERN)
                    self.assertIn(f"duration(self) <= duration('{cc.fmt_ms(hi)}')", rules)
                    if lo:
                        self.assertIn(f"duration(self) >= duration('{cc.fmt_ms(lo)}')", rules)
                    else:
                        self.assertNotIn(">=", rules)
                elif t == "memory":
                    self.assertTrue(node.get("x-kubernetes-int-or-string"))
                    self.assertEqual(node.get("pattern"), cc.MEMORY_PATTERN)
                    self.assertEqual(lo, 6 * 2**20)
                    self.assertIn(f"self >= {lo}", rules)
                    self.assertIn("compareTo(quantity('6Mi')) >= 0", rules)
                    self.assertEqual(hi, 2**64 - 1)
                    self.assertIn("compareTo(quantity('16Ei')) < 0", rules)
                elif t == "cpu":
                    self.assertTrue(node.get("x-kubernetes-int-or-string"))
                    self.assertEqual(node.get("pattern"), cc.CPU_PATTERN)
                    self.assertIn(f"compareTo(quantity('{lo}m')) >= 0", rules)
                    self.assertIn(f"compareTo(quantity('{hi // 1000}')) <= 0", rules)
                    self.assertIn(f"self >= {max(1, lo // 1000)} && self <= {hi // 1000}", rules)
                elif t == "string":
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual(node.get("enum"), f["values"])
                elif t == "name":
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual(node.get("maxLength"), hi)
                    self.assertEqual(node.get("pattern"), "^[a-z]([-a-z0-9]*[a-z0-9])?$")
                elif t in ("image", "path"):
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual((node.get("minLength"), node.get("maxLength")), (lo, hi))
                    self.assertEqual(node.get("pattern"),
                                     "^[!-~]+$" if t == "image" else "^/[!-~]*$")
                elif t == "bool":
                    self.assertEqual(node.get("type"), "boolean")
                elif t == "env":
                    self.assertEqual(node.get("type"), "object")
                    self.assertEqual(node.get("maxProperties"), hi)
                    self.assertTrue(node["additionalProperties"].get("x-kubernetes-int-or-string"))
                    self.assertIn("'PORT' in self", rules)
                elif t == "address":
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual((node.get("minLength"), node.get("maxLength")), (lo, hi))
                    self.assertEqual(node.get("pattern"), cc.ADDRESS_PATTERN)
                elif t in ("cron", "zone"):
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual((node.get("minLength"), node.get("maxLength")), (lo, hi))
                    self.assertEqual(node.get("pattern"),
                                     cc.CRON_PATTERN if t == "cron" else cc.ZONE_PATTERN)
                elif t == "text":
                    self.assertEqual(node.get("type"), "string")
                    self.assertEqual(node.get("maxLength"), hi)
                    self.assertEqual(node.get("minLength", 0), lo)
                elif t == "list":
                    self.assertEqual(node.get("type"), "array")
                    self.assertEqual(node.get("maxItems"), hi)
                    self.assertEqual(node.get("x-kubernetes-list-type"), "map")
                    self.assertEqual(node.get("x-kubernetes-list-map-keys"), ["name"])
                    item = node["items"]
                    self.assertEqual(item.get("type"), "object")
                    children = [c for c in self.fields if c["path"].rsplit(".", 1)[0] == path
                                and c["path"] != path]
                    want = sorted(c["path"].rsplit(".", 1)[1] for c in children if c["required"])
                    self.assertEqual(sorted(item.get("required", [])), want)
                elif t == "map":
                    self.assertEqual(node.get("type"), "object")
                    children = [c for c in self.fields if c["path"].rsplit(".", 1)[0] == path
                                and c["path"] != path]
                    want = sorted(c["path"].rsplit(".", 1)[1] for c in children if c["required"])
                    if path == "metadata":
                        want = []  # the API server requires the name itself
                    self.assertEqual(sorted(node.get("required", [])), want)
                else:
                    self.fail(f"a type this test does not know: {t}")
                checked += 1
        self.assertGreaterEqual(checked, 30)

    def test_every_schema_field_in_parser(self):
        known = {f["path"] for f in self.fields}
        for p in cc.schema_paths(self.schema):
            if p.split(".")[0] in ("spec", "metadata"):
                self.assertIn(p, known, f"the CRD's schema has {p}, which the parser refuses")
        self.assertEqual(sorted(self.schema["properties"]),
                         ["apiVersion", "kind", "metadata", "spec", "status"])

    def test_rules_across_fields(self):
        rules = cc.rules(cc.node_at(self.schema, "spec.scale"))
        self.assertIn("self.min <= self.max", rules)
        self.assertIn("self.initial <= self.max", rules)


class TestVerdicts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.crd = cc.load_crd()
        cls.schema = cc.crd_schema(cls.crd)

    def offline(self, doc):
        errs = cc.openapi_errors(self.schema, doc)
        return not errs, "; ".join(errs)[:300]

    def test_generated(self):
        for apiver in (cc.api_version(self.crd), "stoke/v1"):
            cases = cc.cases(apiver)
            verdicts = cc.parser_verdicts([c.doc for c in cases])
            self.assertGreater(len(cases), 250)
            for c, (ok, field, err) in zip(cases, verdicts):
                with self.subTest(case=c.what, apiVersion=apiver):
                    sok, serr = self.offline(c.doc)
                    if c.known:
                        self.assertEqual((ok, sok), c.known,
                                         f"a known difference changed: parser {err}, schema {serr}")
                        continue
                    self.assertEqual(ok, c.valid, f"parser: {field}: {err}")
                    if c.valid:
                        self.assertTrue(sok, f"schema refused a valid document: {serr}")
                    elif c.cel:
                        # Only a CEL rule can refuse it: OpenAPI alone lets it
                        # through, and the field (or spec.scale) has a rule.
                        self.assertTrue(sok, f"expected a CEL-only refusal, got {serr}")
                    else:
                        self.assertFalse(sok, f"schema accepted what the parser refuses ({err})")

    def test_spec_files(self):
        apiver = cc.api_version(self.crd)
        for path, valid in cc.spec_files():
            with self.subTest(file=os.path.relpath(path, cc.ROOT)):
                out = subprocess.run([cc.spec_tool(), "check", path], check=True,
                                     capture_output=True, text=True)
                self.assertEqual(json.loads(out.stdout)["ok"], valid, out.stdout)
                try:
                    with open(path, encoding="utf-8") as f:
                        doc = yaml.safe_load(f)
                except (yaml.YAMLError, UnicodeDecodeError):
                    self.assertFalse(valid)  # refused as YAML: not the schema's to judge
                    continue
                doc["apiVersion"] = apiver
                sok, serr = self.offline(doc)
                if valid:
                    self.assertTrue(sok, serr)

    def test_examples_use_the_group(self):
        apiver = cc.api_version(self.crd)
        for rel in ("deploy/examples/hello/hello.yaml",):
            with open(os.path.join(cc.ROOT, rel), encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            self.assertEqual(doc["apiVersion"], apiver, rel)
            self.assertTrue(self.offline(doc)[0], rel)


if __name__ == "__main__":
    unittest.main(verbosity=1)
