"""Every admin API operation, fuzzed from /openapi.json over real HTTP, on SQLite and PostgreSQL.

schemathesis generates requests from the published document (valid ones and, in negative mode, invalid ones:
wrong types, out-of-range numbers, odd strings), sends them to the real server with a valid api key, and checks
that no answer is a 5xx and that every answer is documented: its status code is listed for the operation and its
body matches the documented schema (errors: ``{code, message, field}``). Then the hostile inputs the issue
names, sent to every operation in the document: a body nested 500 levels deep, NUL characters and lone
surrogates, integers beyond 64 bits, in the body and in each query and path parameter.

Bounded: a few examples per operation and mode (seeded, so a run is repeatable), about 15 s per engine.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveServer

# examples per operation: generating a case costs more than sending it, and the hostile inputs below are sent to
# every operation deterministically, so a few of each mode is enough
EXAMPLES = {GenerationMode.POSITIVE: 3, GenerationMode.NEGATIVE: 3}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.fixture
def quiet_server(db_url, engine):
    """The real server without its in-process worker: nothing here needs events resolved, and generating cases
    is CPU work that a polling worker thread would slow down."""
    with LiveServer(db_url, engine, run_worker=False) as srv:
        yield srv


@pytest.fixture
def schema(quiet_server):
    doc = requests.get(f"{quiet_server.base_url}/openapi.json", timeout=30).json()
    return doc, schemathesis.openapi.from_dict(doc).include(path_regex="^/api/")


def _operations(schema):
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 25, "the admin API should be in the document"
    return ops


def _negatable(op: dict) -> bool:
    """Whether negative mode can make an invalid request: a body, or a parameter with a type or constraint to break.
    (An operation whose only parameters are free strings has none; hypothesis searches for seconds to find that.)"""
    if op.get("requestBody"):
        return True
    for p in op.get("parameters", []):
        for sch in [p.get("schema", {}), *p.get("schema", {}).get("anyOf", [])]:
            if sch.get("type") not in (None, "string", "null") or set(sch) - {"type", "title", "description"}:
                return True
    return False


def _fuzz(op, mode, examples, call, failures):
    """Run ``examples`` generated cases of one operation; a failure is recorded, not raised, to report them all."""

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case):
        response = call(case)
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:
            failures.append(f"{op.label} [{mode.value}] -> {response.status_code} {response.text[:200]}"
                            f"\n    {type(exc).__name__}: {str(exc)[:300]}")  # fmt: skip

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation without parameters or body: nothing to break
        assert mode == GenerationMode.NEGATIVE, op.label


def test_fuzz_every_admin_operation(quiet_server, workspace, schema):
    server = quiet_server
    failures: list[str] = []
    headers = bearer(workspace)
    with requests.Session() as session:

        def call(case):
            return case.call(base_url=server.base_url, headers=headers, session=session)

        doc, schema = schema
        for op in _operations(schema):
            for mode, examples in EXAMPLES.items():
                if mode == GenerationMode.POSITIVE or _negatable(doc["paths"][op.path][op.method.lower()]):
                    _fuzz(op, mode, examples, call, failures)
    assert not failures, "\n".join(failures)


# --- the hostile inputs of issue 11, on every operation --------------------------------------------------------------


def _url(path: str, values: dict) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: values.get(m.group(1), "x"), path)


def _json_ops(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/api/") and "application/json" in (op.get("requestBody") or {}).get("content", {}):
                yield method, path


def _query_params(doc):
    for path, item in doc["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in item.items():
            for p in op.get("parameters", []):
                if p["in"] in ("query", "path"):
                    yield method, path, p


def _assert_400(r, field_prefix):
    assert r.status_code == 400, (r.request.method, r.request.url, r.status_code, r.text)
    body = r.json()
    assert body["code"] == "bad_request" and body["field"].startswith(field_prefix), body
    assert "char " not in body["message"] and "Traceback" not in body["message"]


DEEP = b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}"
HOSTILE_BODIES = [
    (DEEP, "body.a[0][0]"),
    (b"[" * 100_000 + b"]" * 100_000, "body"),  # the stdlib parser would raise RecursionError
    (b'{"name": "a\\u0000b"}', "body.name"),
    (b'{"a\\u0000": 1}', "body"),
    (b'{"name": "\\ud800"}', "body"),  # orjson refuses a lone surrogate as invalid JSON
    (b'{"n": 100000000000000000000000}', "body.n"),
    (b'{"n": -9223372036854775809}', "body.n"),
    (b'{"n": 1e999}', "body"),  # orjson refuses it as JSON: an Infinity is not a number
    (b'{"broken": ', "body"),
]


def test_hostile_bodies_on_every_json_operation(http, workspace):
    doc = http.get("/openapi.json").json()
    ops = list(_json_ops(doc))
    assert len(ops) >= 8
    for method, path in ops:
        for body, field in HOSTILE_BODIES:
            r = http.request(method.upper(), _url(path, {}), content=body,
                             headers={**bearer(workspace), "Content-Type": "application/json"})  # fmt: skip
            _assert_400(r, field)


def test_hostile_parameters_on_every_operation(http, workspace):
    doc = http.get("/openapi.json").json()
    seen_int = 0
    for method, path, p in _query_params(doc):
        values = ["a\x00b"]
        if p["schema"].get("type") == "integer" or any(
            s.get("type") == "integer" for s in p["schema"].get("anyOf", [])
        ):
            # beyond 64 bits written plainly, with a zero fraction pydantic takes as an int, and a non-decimal digit
            values += [str(2**70), str(-(2**70)), "1" + "0" * 19 + ".0"]
            # "²".isdigit() but int("²") fails: pydantic refuses it (its first complaint may be another field)
            r = http.request(method.upper(), _url(path, {p["name"]: "²"} if p["in"] == "path" else {}),
                             params={} if p["in"] == "path" else {p["name"]: "²"}, headers=bearer(workspace))
            assert r.status_code == 400 and r.json()["code"] == "bad_request", (path, p["name"], r.text)
            seen_int += 1
        for value in values:
            if p["in"] == "path":
                url, params = _url(path, {p["name"]: value.replace("\x00", "%00")}), {}
            else:
                url, params = _url(path, {}), {p["name"]: value}
            r = http.request(method.upper(), url, params=params, headers=bearer(workspace))
            _assert_400(r, p["name"])
    assert seen_int >= 5  # limit=, before=, top=, ... are all checked


def test_unknown_query_parameter_with_nul_is_refused(http, workspace):
    r = http.get("/api/workspace", params={"x\x00": "1"}, headers=bearer(workspace))
    assert r.status_code == 400 and "NUL" in r.json()["message"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the limit is read before any store is touched
def test_body_larger_than_the_limit_is_413(http, workspace):
    from chorus.api.guard import MAX_JSON_BODY

    big = json.dumps({"source": "x" * (MAX_JSON_BODY + 10)}).encode()
    r = http.put("/api/partials/big", content=big, headers={**bearer(workspace), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_wrong_or_broken_body_encodings_are_clear_400s(http, workspace):
    h = bearer(workspace)
    r = http.post("/api/messages", files={"f": ("a.txt", b"x")}, headers=h)  # a form where JSON is expected
    assert r.status_code == 415 and r.json() == {**r.json(), "code": "unsupported_media_type", "field": "Content-Type"}
    r = http.post("/api/imports", content=b"--x\r\n", headers={**h, "content-type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["field"] == "body" and "form" in r.json()["message"]
    r = http.post("/api/imports", files={"file": ("a.csv", b"x\n")}, data={"source": "st\x00re"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "source" and "NUL" in r.json()["message"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the reports read the lake (DuckDB), not the store
def test_analytics_edge_parameters_with_a_lake(db_url, engine, workspace, tmp_path):
    """With a lake to read (without one every report is a 400 before its parameters matter): extreme dates and
    the smallest accepted numbers give an answer or a 400, never a 500."""
    from datetime import timedelta

    from chorus.analytics import lake

    with LiveServer(db_url, engine, lake_dir=str(tmp_path)) as srv, httpx.Client(base_url=srv.base_url,
                                                                                   timeout=120) as http:  # fmt: skip
        batch = [{"type": "track", "userId": "u1", "event": "Order Completed", "messageId": f"o{i}",
                  "timestamp": f"2026-01-0{i + 1}T10:00:00Z", "properties": {"revenue": 10},
                  "context": {"channel": "store"}} for i in range(3)]  # fmt: skip
        r = http.post("/v1/batch", json={"batch": batch}, auth=(workspace["server_write_key"], ""))
        assert r.status_code == 200
        srv.settle()
        lake.export(engine, tmp_path, settle=timedelta(0))
        h = bearer(workspace)
        edge = {"since": "1000-01-01", "until": "9000-12-31"}  # the widest period accepted: computed
        tiny = "1e-300"  # the smallest positive numbers
        # each computed report costs seconds on a busy machine: the edges are computed where date arithmetic differs
        # (lookback before `since`, a day after `until`: attribution; `end`: clv); the other reports share them
        cases = {
            "attribution": [edge | {"half_life_days": tiny}],
            "clv": [{"end": "9000-12-31", "unit_days": tiny}, {"end": "9999-12-31"}],
            "paths": [],
            "omnichannel": [{"confidence": "1", "bootstrap": 100}],  # a 400 before any computing
            "showrooming": [],
            "uplift": [],
        }
        for report, param_sets in cases.items():
            for params in [*param_sets, {"since": "0001-01-01"}, {"until": "9999-12-31"}]:
                r = http.get(f"/api/analytics/{report}", params=params, headers=h)
                assert r.status_code in (200, 400), (report, params, r.status_code, r.text)
                if r.status_code == 400:
                    assert r.json()["code"] == "bad_request", r.text
