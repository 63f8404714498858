"""Checking answers against gatekeeper's OpenAPI document (issue #20 §4).

``Contract(doc)`` finds the operation a concrete request went to (the
document's path templates, ``{id}`` matching one segment), the response the
document declares for the status it got (or ``default``), and validates a JSON
body against that response's schema with ``jsonschema`` (OpenAPI 3.1 schemas
are JSON Schema 2020-12; ``$ref`` resolved inside the document). An answer the
document does not declare fails, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:gatekeeper:openapi"


class Contract:
    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(
            BASE, Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        self._paths = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(p)) + "$"), p)
            for p in doc["paths"]
        ]
        self.checked: set[tuple[str, str, str]] = set()

    def validator(self, schema_name: str) -> jsonschema.protocols.Validator:
        ref = {"$ref": f"{BASE}#/components/schemas/{schema_name}"}
        return jsonschema.Draft202012Validator(ref, registry=self.registry)

    def validate(self, schema_name: str, instance: Any) -> None:
        self.validator(schema_name).validate(instance)

    def template(self, path: str) -> str:
        # An exact path wins over a template ({jobs_path}/openapi.json over {jobs_path}/{id}).
        if path in self.doc["paths"]:
            return path
        matches = [p for rx, p in self._paths if rx.match(path)]
        assert matches, f"{path} is not in the document"
        return matches[0]

    def response(self, method: str, path: str, status: int) -> dict[str, Any]:
        template = self.template(path)
        op = self.doc["paths"][template].get(method.lower())
        assert op is not None, f"{method} {template} is not in the document"
        responses = op["responses"]
        declared = responses.get(str(status)) or responses.get("default")
        assert declared is not None, f"{method} {template} does not declare {status}"
        self.checked.add((method.upper(), template, str(status)))
        return dict(declared)

    def check(self, method: str, path: str, status: int, body: Any) -> str | None:
        """Validate a JSON ``body`` received for ``method path`` with ``status``; returns the
        schema it was checked against (None: the document declares no JSON schema there)."""
        declared = self.response(method, path, status)
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            return None
        ref = schema.get("$ref", "")
        rooted = {"$ref": BASE + ref} if ref.startswith("#") else schema
        jsonschema.Draft202012Validator(rooted, registry=self.registry).validate(body)
        return ref.rsplit("/", 1)[-1] or "inline"
