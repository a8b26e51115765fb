"""google.api.http path templates."""

from __future__ import annotations

import pytest

from gateway.path_template import TemplateError, parse_template


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/api/v1/models", "/api/v1/models", {}),
        ("/api/v1/models/{model_id}", "/api/v1/models/smollm2-135m", {"model_id": "smollm2-135m"}),
        ("/api/v1/models/{model_id}", "/api/v1/models/a%20b", {"model_id": "a b"}),
        ("/api/v1/models/{model_id}", "/api/v1/models/a%2Fb", {"model_id": "a/b"}),
        ("/api/v1/models/{model_id}", "/api/v1/models/a/b", None),
        ("/api/v1/models/{model_id}", "/api/v1/models/", None),
        ("/api/v1/completions:stream", "/api/v1/completions:stream", {}),
        ("/api/v1/completions:stream", "/api/v1/completions%3Astream", {}),
        ("/api/v1/completions:stream", "/api/v1/completions", None),
        ("/c/{id}:run", "/c/abc:run", {"id": "abc"}),
        ("/c/{id}:run", "/c/abc:cancel", None),
        ("/c/{id}", "/c/abc:run", {"id": "abc:run"}),  # no verb in the template: the colon is data
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2", {"name": "shelves/1/books/2"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books", None),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2/x", None),
        (
            "/v1/{name=shelves/*/books/*}:archive",
            "/v1/shelves/1/books/2:archive",
            {"name": "shelves/1/books/2"},
        ),
        ("/v1/{book.name=shelves/*}", "/v1/shelves/s", {"book.name": "shelves/s"}),
        ("/v1/{name=**}", "/v1/a/b/c", {"name": "a/b/c"}),
        ("/v1/{name=**}", "/v1/a/b%2Fc", {"name": "a/b%2Fc"}),  # multi-segment keeps an encoded slash
        ("/v1/{name=**}:get", "/v1/a/b:get", {"name": "a/b"}),
        ("/v1/*/items", "/v1/x/items", {}),
        ("/v1/files/**", "/v1/files/a/b", {}),
        ("/v1/{a}/{b}", "/v1/1/2", {"a": "1", "b": "2"}),
    ],
)
def test_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


@pytest.mark.parametrize(
    "template",
    [
        "api/v1",
        "/v1/{name",
        "/v1/{name}}",
        "/v1/{na-me}",
        "/v1//x",
        "/v1/**/x",
        "/v1/{a}/{a}",
        "/v1/x:",
        "/v1/{name=a/{b}}",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_openapi_path_and_specificity() -> None:
    t = parse_template("/v1/{book.name=shelves/*/books/*}:archive")
    assert t.openapi_path() == "/v1/{book.name}:archive"
    assert t.variables[0].multi_segment
    verb = parse_template("/c/{id}:run")
    plain = parse_template("/c/{id}")
    assert sorted([plain, verb], key=lambda x: x.specificity()) == [verb, plain]
