"""A property-based test of the HTTP API: request bodies drawn from the app's own OpenAPI schema (each
route's request model, so mostly well-formed bodies with odd values), and arbitrary JSON, never get a
5xx; every 4xx is OpenAI's error object. The server keeps answering a plain request afterwards."""

import pytest
from test_chat import MESSAGES, chat_checkpoint  # noqa: F401  (the fixtures)
from test_serve import checkpoint  # noqa: F401

from encore import load, optimize

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("hypothesis_jsonschema")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis_jsonschema import from_schema  # noqa: E402

ROUTES = {"/v1/completions": "CompletionRequest", "/v1/chat/completions": "ChatRequest"}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def client(chat_checkpoint):  # noqa: F811
    from fastapi.testclient import TestClient

    from encore.serve import ServerConfig, build_app

    model = optimize(load(chat_checkpoint))
    config = ServerConfig(model=str(chat_checkpoint), max_input_len=64, max_tokens=6, kv_budget_mb=16, max_batch=8)
    app, _ = build_app(config, model)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.schema = app.openapi()
        yield c


def _body_schema(schema: dict, name: str) -> dict:
    """A route's request model as one JSON schema (its $refs resolve inside it)."""
    return {**schema["components"]["schemas"][name], "components": schema["components"]}


def _check(client, route: str, body) -> None:
    r = client.post(route, json=body)
    assert r.status_code < 500, (route, body, r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], r.text


@pytest.mark.parametrize("route", list(ROUTES))
def test_bodies_from_the_schema_never_get_a_5xx(client, route):
    @SETTINGS
    @given(body=from_schema(_body_schema(client.schema, ROUTES[route])))
    def run(body):
        _check(client, route, body)

    run()
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("route", list(ROUTES))
def test_arbitrary_json_never_gets_a_5xx(client, route):
    @SETTINGS
    @given(body=JSON)
    def run(body):
        _check(client, route, body)

    run()
    assert client.post("/v1/completions", json={"prompt": "open", "max_tokens": 2}).status_code == 200
