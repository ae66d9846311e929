"""The OpenAPI document of /v1: valid OpenAPI 3.1, the server's routes exactly, and bodies
that are the wire structs' own schemas."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from aiobatch import openapi, wire
from aiobatch.api import JobSnapshot
from aiobatch.server import ControlServer, Limits
from aiobatch.spec import JobSpec

METHODS = ("get", "post", "put", "patch", "delete")


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"].startswith("3.1")
    validate(document)


@pytest.mark.anyio
async def test_the_document_has_every_v1_route_of_the_server_and_no_other() -> None:
    """Each documented operation reaches a route of the server's application, and together
    they reach every route it has under /v1 (and /metrics)."""
    app = ControlServer(None)._application(Limits())  # type: ignore[arg-type]
    served = {
        route
        for route in app.router.routes()
        if route.resource is not None
        and (
            route.resource.canonical.startswith(wire.API_PREFIX + "/")
            or route.resource.canonical == wire.METRICS_PATH
        )
        and route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }
    reached = set()
    for method, path in operations(openapi.document()):
        url = path.format(job_id="j", task="t", index="0", stream="stdout", name="local")
        match = await app.router.resolve(make_mocked_request(method, url))
        assert match.http_exception is None, (method, path, match.http_exception)
        reached.add(match.route)
    assert reached == served


def test_bodies_are_the_schemas_of_the_wire_structs() -> None:
    document = openapi.document()
    _, components = msgspec.json.schema_components(
        [JobSnapshot, JobSpec, wire.Health, wire.ErrorBody], ref_template=openapi.SCHEMA_REF
    )
    as_json = msgspec.json.decode(msgspec.json.encode(components))  # tuples become lists
    for name, schema in as_json.items():
        assert document["components"]["schemas"][name] == schema
    get_job = document["paths"]["/v1/jobs/{job_id}"]["get"]
    assert get_job["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobSnapshot"
    }
    submit = document["paths"]["/v1/jobs"]["post"]
    for media in ("application/json", "application/yaml", "application/toml"):
        schema = submit["requestBody"]["content"][media]["schema"]
        assert schema == {"$ref": "#/components/schemas/JobSpec"}


def test_every_error_answer_is_the_error_body() -> None:
    document = openapi.document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            errors = {s: r for s, r in operation["responses"].items() if int(s) >= 400}
            assert {"400", "500"} <= set(errors), (method, path)
            for answer in errors.values():
                name = answer["$ref"].rsplit("/", 1)[-1]
                content = document["components"]["responses"][name]["content"]
                assert content == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                }


def test_links_lead_from_a_submitted_job_to_operations_on_it() -> None:
    document = openapi.document()
    ids = {
        operation["operationId"]: operation
        for item in document["paths"].values()
        for operation in item.values()
    }
    links = ids["submitJob"]["responses"]["201"]["links"]
    assert {"getJob", "waitJob", "stopJob", "retryJob", "readLog"} <= set(links)
    for link in links.values():
        target = ids[link["operationId"]]
        names = {p["name"] for p in target.get("parameters", [])}
        assert set(link["parameters"]) <= names
        assert {"job_id", "job"} & set(link["parameters"])


def test_the_document_is_the_same_at_every_call() -> None:
    first = openapi.document()
    first["paths"].clear()  # a caller's copy: changing it changes nothing else
    assert openapi.document() == msgspec.json.decode(msgspec.json.encode(openapi.document()))
    assert openapi.document()["paths"]


def test_each_operation_states_the_scope_of_the_route_table() -> None:
    """The document's scopes are wire.ROUTE_ACCESS's: bearer tokens (and links, where a link
    may go) need that scope; the unix socket's peers are mapped to one by the config."""
    document = openapi.document()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            access = wire.ROUTE_ACCESS[method.upper(), path]
            assert operation["x-aiobatch-scope"] == access.scope
            assert {"bearer": [access.scope]} in operation["security"]
            assert ({"link": ["read"]} in operation["security"]) == (access.link is not None)
    assert set(document["components"]["securitySchemes"]) == {"bearer", "link"}
