"""REST transcoding against the test-only API: templates, bodies, query parameters, responses, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import create_app
from gateway.web_state import STATE
from tests.gateway.gateway_testlib import ProtoApi, RunningLibrary, dummy_options

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def reason_of(body: dict[str, Any]) -> str:
    return next(d["reason"] for d in body["details"] if d["@type"] == ERROR_INFO)


async def test_multi_segment_variable_and_additional_binding(client: Any, library: RunningLibrary) -> None:
    resp = await client.get("/v1/shelves/s1/books/b%202")
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "shelves/s1/books/b 2"
    assert body["isbn"] == "9780441013593"  # int64 is a string in proto-JSON
    assert body["tags"] == [] and body["in_print"] is False  # unpopulated fields are emitted

    resp = await client.get("/v1/by-path/shelves/x/books/y/extra")
    assert resp.status == 200
    assert (await resp.json())["name"] == "shelves/x/books/y/extra"
    assert library.servicer.calls == ["GetBook", "GetBook"]


async def test_unary_metadata_becomes_headers(client: Any) -> None:
    resp = await client.get("/v1/shelves/s1/books/b1")
    assert resp.headers["Grpc-Metadata-x-served-by"] == "library"
    assert resp.headers["Grpc-Trailer-x-book-count"] == "1"


async def test_body_field_with_path_and_query(client: Any) -> None:
    book = {
        "title": "Dune",
        "author": {"name": "Herbert", "born": 1920},
        "genre": "GENRE_FICTION",
        "lang": "en",
    }
    resp = await client.post("/v1/shelves/s1/books?request_id=r-1", json=book)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "shelves/s1/books/new"
    assert body["etag"] == "r-1"
    assert body["author"] == {"name": "Herbert", "born": 1920}
    assert body["genre"] == "GENRE_FICTION"
    assert body["language_code"] == "en"  # json_name "lang" accepted, proto name printed


async def test_camel_case_input_accepted(client: Any) -> None:
    resp = await client.post(
        "/v1/shelves/s1/books", json={"title": "T", "inPrint": True, "language_code": "fr"}
    )
    body = await resp.json()
    assert body["in_print"] is True and body["language_code"] == "fr"


async def test_nested_path_field(client: Any) -> None:
    resp = await client.patch("/v1/shelves/s1/books/b1", json={"title": "New", "name": "ignored"})
    assert resp.status == 200
    body = await resp.json()
    assert body == {**body, "name": "shelves/s1/books/b1", "title": "New"}  # the path wins over the body


async def test_custom_verb_body_star_and_response_body(client: Any) -> None:
    resp = await client.post("/v1/shelves/s1/books/b1:archive", json={"reason": "old"})
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "shelves/s1/books/b1" and body["title"] == "old"
    assert "note" not in body and "book" not in body  # response_body: the bare book


async def test_custom_verb_allows_empty_body(client: Any) -> None:
    resp = await client.post("/v1/shelves/s1/books/b1:archive")
    assert resp.status == 200
    assert (await resp.json())["title"] == ""


async def test_delete_returns_empty_object(client: Any) -> None:
    resp = await client.delete("/v1/shelves/s1/books/b1")
    assert resp.status == 200
    assert await resp.json() == {}


async def test_query_parameters_of_every_kind(client: Any) -> None:
    query = [
        ("filter.author", "Le Guin"),
        ("filter.genres", "GENRE_FICTION"),
        ("filter.genres", "2"),
        ("filter.bornAfter", "1900"),
        ("tags", "a"),
        ("tags", "b"),
        ("page_size", "10"),
        ("minPrice", "2.5"),
        ("include_out_of_print", "true"),
        ("published_after", "2020-01-02T03:04:05Z"),
        ("max_age", "90s"),
        ("min_pages", "0"),
        ("title_prefix", "The"),
        ("read_mask", "name,author.name"),
        ("order", "SEARCH_ORDER_PUBLISHED"),
        ("isbns", "9780441013593"),
        ("isbns", "1"),
        ("in_print", "false"),
        ("lang", "de"),
        ("cursor", "AAEC"),
    ]
    resp = await client.get("/v1/books:search", params=query)
    assert resp.status == 200, await resp.text()
    echo = (await resp.json())["echo"]
    assert echo["filter"] == {
        "shelf": "",
        "author": "Le Guin",
        "genres": ["GENRE_FICTION", "GENRE_POETRY"],
        "born_after": 1900,
    }
    assert echo["tags"] == ["a", "b"]
    assert echo["page_size"] == 10 and echo["min_price"] == 2.5 and echo["include_out_of_print"] is True
    assert echo["published_after"] == "2020-01-02T03:04:05Z"
    assert echo["max_age"] == "90s"
    assert echo["min_pages"] == 0  # a wrapper: present although zero
    assert echo["title_prefix"] == "The"
    assert echo["read_mask"] == "name,author.name"
    assert echo["order"] == "SEARCH_ORDER_PUBLISHED"
    assert echo["isbns"] == ["9780441013593", "1"]
    assert echo["in_print"] is False
    assert echo["language_code"] == "de"
    assert echo["cursor"] == "AAEC"


async def test_additional_binding_with_nested_path_var_and_bare_list(client: Any) -> None:
    resp = await client.get("/v1/shelves/s9/books:search")
    assert resp.status == 200
    body = await resp.json()
    assert isinstance(body, list) and body[0]["name"] == "b/1"


@pytest.mark.parametrize(
    ("query", "reason", "needle"),
    [
        ("nope=1", "UNKNOWN_QUERY_PARAMETER", "nope"),
        ("filter.nope=1", "UNKNOWN_QUERY_PARAMETER", "filter.nope"),
        ("order=SEARCH_ORDER_BOGUS", "INVALID_QUERY_PARAMETER", "SEARCH_ORDER_BOGUS"),
        ("page_size=ten", "INVALID_QUERY_PARAMETER", "page_size"),
        ("page_size=1&page_size=2", "INVALID_QUERY_PARAMETER", "given 2 times"),
        ("filter=x", "INVALID_QUERY_PARAMETER", "message field"),
        ("published_after=yesterday", "INVALID_QUERY_PARAMETER", "published_after"),
        ("include_out_of_print=maybe", "INVALID_QUERY_PARAMETER", "include_out_of_print"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(
    client: Any, query: str, reason: str, needle: str
) -> None:
    resp = await client.get(f"/v1/books:search?{query}")
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == 3
    assert needle in body["message"]
    assert reason_of(body) == reason


async def test_query_parameter_on_path_field_rejected(client: Any) -> None:
    resp = await client.get("/v1/shelves/s1/books/b1?name=other")
    assert resp.status == 400
    assert "already set by the path" in (await resp.json())["message"]


async def test_query_parameter_on_body_star_route_rejected(client: Any) -> None:
    resp = await client.post("/v1/fail?code=3", json={})
    assert resp.status == 400
    assert reason_of(await resp.json()) == "UNKNOWN_QUERY_PARAMETER"


@pytest.mark.parametrize(
    ("body", "reason", "needle"),
    [
        (b'{"title": "x",', "MALFORMED_JSON", "malformed JSON"),
        (b'{"title": "x", "title": "y"}', "MALFORMED_JSON", "duplicate key"),
        (b'{"title": NaN}', "MALFORMED_JSON", "NaN"),
        (b'{"title": "x", "colour": "red"}', "UNKNOWN_FIELD", "colour"),
        (b'{"genre": "GENRE_HORROR"}', "INVALID_FIELD_VALUE", "GENRE_HORROR"),
        (b'{"pages": "many"}', "INVALID_FIELD_VALUE", "pages"),
        (b'{"pages": 1.5}', "INVALID_FIELD_VALUE", "pages"),
        (b'{"author": "Herbert"}', "INVALID_FIELD_VALUE", "author"),
        (b'{"published": "not a time"}', "INVALID_FIELD_VALUE", "published"),
        (b'["a"]', "INVALID_FIELD_VALUE", "book"),
        (b"\xff\xfe", "MALFORMED_JSON", "UTF-8"),
    ],
)
async def test_bad_bodies_are_400_naming_the_problem(
    client: Any, body: bytes, reason: str, needle: str
) -> None:
    resp = await client.post("/v1/shelves/s1/books", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    payload = await resp.json()
    assert payload["code"] == 3
    assert needle in payload["message"], payload["message"]
    assert reason_of(payload) == reason


async def test_unknown_nested_field_is_named_in_bad_request(client: Any) -> None:
    resp = await client.post("/v1/shelves/s1/books", json={"title": "T", "author": {"name": "A", "age": 3}})
    assert resp.status == 400
    body = await resp.json()
    violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))["field_violations"]
    assert violations[0]["field"] == "book.author.age"
    assert "'book.author.age'" in body["message"]


async def test_body_star_must_be_an_object(client: Any) -> None:
    resp = await client.post("/v1/shelves/s1/books/b1:archive", json=[1, 2])
    assert resp.status == 400
    assert "JSON object" in (await resp.json())["message"]


async def test_body_on_bodyless_route_rejected(client: Any) -> None:
    resp = await client.delete("/v1/shelves/s1/books/b1", json={"x": 1})
    assert resp.status == 400
    assert reason_of(await resp.json()) == "UNEXPECTED_BODY"


async def test_lenient_mode_ignores_unknown_fields(
    aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi
) -> None:
    client = await aiohttp_client(create_app(library.target, dummy_options(dummy_api, strict=False)))
    resp = await client.post("/v1/shelves/s1/books?bogus=1", json={"title": "T", "colour": "red"})
    assert resp.status == 200
    assert (await resp.json())["title"] == "T"


async def test_oversized_body_is_413(
    aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi
) -> None:
    client = await aiohttp_client(create_app(library.target, dummy_options(dummy_api, max_body_bytes=1024)))
    resp = await client.post("/v1/shelves/s1/books", data=json.dumps({"title": "x" * 2000}))
    assert resp.status == 413
    body = await resp.json()
    assert body["code"] == 8 and reason_of(body) == "REQUEST_TOO_LARGE"
    ok = await client.post("/v1/shelves/s1/books", data=json.dumps({"title": "x" * 100}))
    assert ok.status == 200
    assert library.servicer.calls == ["CreateBook"]


async def test_unknown_path_is_404_status(client: Any) -> None:
    resp = await client.get("/v1/nothing/here")
    assert resp.status == 404
    body = await resp.json()
    assert body["code"] == 5 and reason_of(body) == "ROUTE_NOT_FOUND"


async def test_wrong_method_is_405_with_allow(client: Any) -> None:
    resp = await client.put("/v1/shelves/s1/books/b1")
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    assert reason_of(await resp.json()) == "METHOD_NOT_ALLOWED"


async def test_unannotated_rpc_has_no_rest_route_and_is_served_as_over_grpc(
    client: Any, library: RunningLibrary
) -> None:
    router = client.server.app[STATE].router
    assert not any(route.rpc.full_name.endswith(".Internal") for route in router.routes)
    # Connect serves every RPC at its gRPC path, as gRPC itself does (gateway/web_rpc.py): nothing more.
    resp = await client.post("/aibattle.testing.v1.LibraryService/Internal", json={})
    assert resp.status == 200
    assert len(library.servicer.calls) == 1
