"""Check real answers against the served OpenAPI document (for any integration test).

checker = Checker(server.get("/api/openapi.json", auth=False))
status, body = server.request("GET", "/api/rooms")
checker.check("GET", "/api/rooms", status, body)  # AssertionError naming the mismatch
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

JSON = "application/json"


class Checker:
    """Finds the documented answer of a call and validates the body against its schema."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.templates = sorted(document["paths"], key=lambda path: (path.count("{"), -len(path)))
        self.seen: set[tuple[str, str]] = set()
        self.checked = 0

    def template(self, path: str) -> str:
        bare = path.split("?", 1)[0]
        for template in self.templates:
            pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, bare):
                return template
        raise AssertionError(f"{path} is not in the document")

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        template = self.template(path)
        op = self.document["paths"][template].get(method.lower())
        assert op is not None, f"{method} {template} is not documented"
        answer = op["responses"].get(str(status))
        assert answer is not None, f"{method} {template} does not document {status}: {body}"
        schema = answer.get("content", {}).get(JSON, {}).get("schema")
        assert schema is not None, f"{method} {template} {status} has no JSON schema"
        root = {**schema, "components": self.document["components"]}
        errors = sorted(Draft202012Validator(root).iter_errors(body), key=str)
        assert not errors, f"{method} {path} {status}: {errors[0].message} in {body}"
        self.seen.add((method.lower(), template))
        self.checked += 1
