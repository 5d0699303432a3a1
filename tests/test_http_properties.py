"""A property-based test of the HTTP API: request bodies drawn from the app's own OpenAPI schema (each
route's request model, so mostly well-formed bodies with odd values), and arbitrary JSON, never get a
5xx; every 4xx is OpenAI's error object. The server keeps answering a plain request afterwards."""

import pytest
from test_chat import MESSAGES, chat_checkpoint  # noqa: F401  (the fixtures)
from test_serve import checkpoint  # noqa: F401

from encore import load, optimize

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROUTES = {"/v1/completions": "CompletionRequest", "/v1/chat/completions": "ChatRequest"}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
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


def from_schema(schema: dict, components: dict) -> st.SearchStrategy:
    """Values of an OpenAPI (JSON) schema: the kinds pydantic writes for the request models (types,
    bounds, enums, anyOf, $ref, required and optional properties)."""
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(low, schema.get("maximum"), allow_nan=False, allow_infinity=False,
                         exclude_min="exclusiveMinimum" in schema)  # fmt: skip
    if kind == "string":
        return st.text(max_size=24)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), components), max_size=3)
    if kind == "object" and "properties" in schema:
        props = {k: from_schema(v, components) for k, v in schema["properties"].items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    return JSON  # an object of any properties, or a schema without a type


def _body_schema(schema: dict, name: str) -> st.SearchStrategy:
    """A route's request model's bodies."""
    components = schema["components"]["schemas"]
    return from_schema(components[name], components)


def _check(client, route: str, body) -> None:
    r = client.post(route, json=body)
    assert r.status_code < 500, (route, body, r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], r.text


@pytest.mark.parametrize("route", list(ROUTES))
def test_bodies_from_the_schema_never_get_a_5xx(client, route):
    @SETTINGS
    @given(body=_body_schema(client.schema, ROUTES[route]))
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
