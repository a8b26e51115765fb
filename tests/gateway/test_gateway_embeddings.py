"""POST /api/v1/embeddings through the gateway, on the local embedding model (in-process and network)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.gateway.embedding_testlib import EMBED, N_EMBD

pytestmark = pytest.mark.slow
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def reason_of(body: dict[str, Any]) -> str:
    return next(d["reason"] for d in body["details"] if d["@type"] == ERROR_INFO)


async def test_embeddings_over_rest(embedding_api: Any) -> None:
    texts = ["The cat sat on the mat.", "Stock markets fell.", "The cat sat on the mat."]
    resp = await embedding_api.post("/api/v1/embeddings", json={"model": EMBED, "input": texts})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == EMBED
    assert [e["index"] for e in body["embeddings"]] == [0, 1, 2]
    vectors = [e["values"] for e in body["embeddings"]]
    assert all(len(v) == N_EMBD for v in vectors)
    assert math.sqrt(sum(x * x for x in vectors[1])) == pytest.approx(1.0, abs=1e-5)
    # The same text: the same vector (to float noise within one batch; exactly, asked again).
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-4)
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-2)
    again = await embedding_api.post("/api/v1/embeddings", json={"model": EMBED, "input": texts})
    assert [e["values"] for e in (await again.json())["embeddings"]] == vectors
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 3
    assert usage["completion_tokens"] == 0
    assert usage["cost_usd"] == pytest.approx(usage["prompt_tokens"] * 0.001)


async def test_refusals_over_rest(embedding_api: Any) -> None:
    cases = [
        ({"model": "smollm2-135m", "input": ["hi"]}, 400, "CAPABILITY_MISSING"),
        ({"model": EMBED, "input": ["hi", ""]}, 400, "INVALID_FIELD"),
        ({"model": EMBED, "input": ["hi"], "dimensions": 64}, 400, "UNSUPPORTED_PARAMETER"),
        ({"model": "no-such-model", "input": ["hi"]}, 404, "MODEL_NOT_FOUND"),
    ]
    for request, status, reason in cases:
        resp = await embedding_api.post("/api/v1/embeddings", json=request)
        body = await resp.json()
        assert (resp.status, reason_of(body)) == (status, reason), body
