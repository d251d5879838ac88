"""The OpenAPI document says what the server does: ids, schemas, headers, statuses."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs
import pytest

from api import Config, create_app
from api._errors import ApiError
from api._runs import LANGUAGE_ALIASES, parse_run_body


@pytest.fixture
async def client(tmp_path: Any) -> Any:
    app = create_app(Config.from_env({}, data_dir=tmp_path), scheduler=None, store=None)
    async with app.test_app() as test_app:
        yield test_app.test_client()


def _validator(doc: dict[str, Any], name: str) -> Any:
    """A validator for one component, with the engine schemathesis uses (jsonschema_rs)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


async def test_every_operation_has_an_id_and_the_errors_it_can_answer(client):
    doc = await (await client.get("/openapi.json")).get_json()
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)) == 6
    for path in doc["paths"].values():
        for op in path.values():
            assert {"404", "405", "500"} <= set(op["responses"])
    run = doc["paths"]["/run"]["post"]["responses"]
    assert {"400", "401", "402", "409", "413", "429", "500", "503"} <= set(run)
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
        run["200"]["headers"]
    )
    assert "Retry-After" in run["429"]["headers"]
    assert "WWW-Authenticate" in run["401"]["headers"]


async def test_languages_and_error_bodies_match_their_schemas(client):
    doc = await (await client.get("/openapi.json")).get_json()
    languages = await (await client.get("/languages")).get_json()
    _validator(doc, "Languages").validate(languages)
    error = _validator(doc, "Error")
    for r in (
        await client.get("/nothing"),
        await client.get("/run"),
        await client.post("/run", json={"code": "x"}),
    ):
        error.validate(await r.get_json())
    assert not error.is_valid({"message": "x"})


@pytest.mark.parametrize(
    "language",
    [
        "python",
        "PYTHON",
        " Js ",
        "nodejs\n",
        "\x1cPython3\u3000",
        "py",
        "javascript",
        "pythonx",
        "",
        "c#",
        "py\x00",
    ],
)
async def test_the_language_schema_accepts_exactly_what_the_server_accepts(client, language):
    doc = await (await client.get("/openapi.json")).get_json()
    pattern = doc["components"]["schemas"]["RunRequest"]["properties"]["language"]["pattern"]
    documented = re.search(pattern, language) is not None
    assert _validator(doc, "RunRequest").is_valid({"code": "x", "language": language}) == documented
    body = json.dumps({"code": "x", "language": language}).encode()
    if documented:
        assert parse_run_body(body, 100, 100).language in ("python", "javascript")
    else:
        with pytest.raises(ApiError) as caught:
            parse_run_body(body, 100, 100)
        for name in LANGUAGE_ALIASES:  # the message lists every accepted name
            assert f'"{name}"' in caught.value.message
