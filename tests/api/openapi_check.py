"""Check a real answer against what /openapi.json documents for its operation: the status is listed, the media
type is one of the listed ones, and a JSON body is valid against the listed schema (formats checked: a
``date-time`` must carry its offset). A body-less answer (a 204) must be documented without content."""

from __future__ import annotations

import httpx
import jsonschema_rs


class Documented:
    def __init__(self, doc: dict):
        self.doc = doc
        self.checked: set[tuple[str, str]] = set()  # (method, path template) whose answers were checked

    def check(self, r: httpx.Response, path: str) -> httpx.Response:
        """Fail unless ``r`` (an answer to ``path``, a template of the document) is what the document says."""
        method = r.request.method.lower()
        op = self.doc["paths"][path][method]
        where = f"{method.upper()} {path} -> {r.status_code}"
        documented = op["responses"].get(str(r.status_code))
        assert documented is not None, f"{where}: status not documented ({sorted(op['responses'])}): {r.text[:300]}"
        content = documented.get("content")
        if not content:
            assert r.content == b"", f"{where}: documented without a body, answered {r.text[:300]}"
        else:
            media = r.headers.get("content-type", "").split(";")[0].strip()
            assert media in content, f"{where}: answered {media}, documented {sorted(content)}"
            if media == "application/json":
                self._validate(content[media]["schema"], r.json(), where)
        self.checked.add((method, path))
        return r

    def _validate(self, schema: dict, body: object, where: str) -> None:
        # the schema's $refs point into the document's components: give it them as its own
        root = {**schema, "components": self.doc.get("components", {})}
        validator = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
        errors = [f"{e.message} at {'/'.join(map(str, e.instance_path))}" for e in validator.iter_errors(body)]
        assert not errors, f"{where}: the answer does not match its schema: {errors[:5]}\n{body}"

    def operations(self, tag: str) -> set[tuple[str, str]]:
        """Every (method, path) of the document with ``tag``."""
        return {(m, p) for p, item in self.doc["paths"].items() for m, op in item.items() if tag in op.get("tags", [])}
