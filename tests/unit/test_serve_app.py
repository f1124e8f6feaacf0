"""The reward server's HTTP contract without Ray: OpenRLHF's protocol on /get_reward, and
every refusal (401, 400, 413, 422, 500) with a clear message, after which a valid request
still succeeds. Scoring is a stand-in here (reward = len(query) / 10) so the app is tested
on its own; the real scorer behind Ray Serve is tests/integration/test_serve_ray.py."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from idrm_ray.serve.app import RewardService, build_app
from idrm_ray.serve.protocol import Limits, RequestError, check_bearer, parse_reward_request, token_digest
from idrm_ray.serve.scoring import Scores

TOKEN = "s3cret-token"
VALID = {"query": ["Human: hi\n\nAssistant: hello</s>", "ab"], "prompts": ["Human: hi\n\nAssistant:", "a"],
         "labels": [None, "x"]}
LIMITS = Limits(max_body_bytes=4096, max_batch=4, max_query_chars=1000)


async def fake_score(req) -> Scores:
    if req.queries[0] == "boom":
        raise RuntimeError("model exploded")
    if req.queries[0] == "nan":
        return Scores([float("nan")], [float("nan")])
    raw = [len(q) / 10 for q in req.queries]
    return Scores(rewards=[r - 1 for r in raw], raw=raw)


def _client(token: str | None) -> TestClient:
    service = RewardService(fake_score, limits=LIMITS, token_digest=token_digest(token) if token else None,
                            info={"checkpoint": "/ckpt"})
    return TestClient(build_app(service))


@pytest.fixture(scope="module")
def client():
    return _client(None)


@pytest.fixture(scope="module")
def auth_client():
    return _client(TOKEN)


def _ok(client, headers=None):
    resp = client.post("/get_reward", json=VALID, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_answer_has_openrlhfs_fields(client):
    body = _ok(client)
    # OpenRLHF reads rewards, then scores (else rewards), and extra_logs as per-query lists.
    assert body["rewards"] == pytest.approx([len(VALID["query"][0]) / 10 - 1, 0.2 - 1])
    assert body["scores"] == body["rewards"]
    assert body["extra_logs"] == {"raw_reward": pytest.approx([len(VALID["query"][0]) / 10, 0.2])}
    assert client.post("/get_reward", json={"query": ["ab"]}).status_code == 200  # prompts/labels optional


@pytest.mark.parametrize("body, status, piece", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"query": ["\xff"]}', 400, "not UTF-8 JSON (bad byte at offset 12)"),
    (b"[1, 2]", 422, "JSON object with a `query` list, got list"),
    (b'{"prompts": ["a"]}', 422, "missing field `query`"),
    (b'{"query": "just a string"}', 422, "`query` must be a list of strings"),
    (b'{"query": []}', 422, "non-empty list"),
    (b'{"query": ["a", 3]}', 422, "`query[1]` must be a string, got int"),
    (b'{"query": ["a"], "prompts": ["a", "b"]}', 422, "`prompts` must be a list as long as `query` (1), got 2 items"),
    (b'{"query": ["a"], "labels": "x"}', 422, "`labels` must be a list as long as `query`"),
    (b'{"query": ["a", "b", "c", "d", "e"]}', 413, "5 queries in one request; the limit is 4"),
    (json.dumps({"query": ["x" * 1001]}).encode(), 413, "`query[0]` has 1001 characters"),
    (b" " * 5000, 413, "exceeds the limit of 4096"),
    (b"[" * 4000, 400, "nested too deeply"),  # found by the soak: json.loads' RecursionError was a bare 500
    (b'{"query": ["a\\ud800b"]}', 422, "`query[0]` is not valid Unicode text: lone surrogate '\\ud800' at character 1"),
])
def test_bad_requests_are_refused_clearly_and_the_server_keeps_serving(client, body, status, piece):
    resp = client.post("/get_reward", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert piece in resp.json()["detail"]
    _ok(client)


def test_oversized_chunked_body_is_refused_while_streaming(client):
    chunks = iter([b'{"query": ["', b"x" * 3000, b"y" * 3000, b'"]}'])  # no Content-Length: chunked
    resp = client.post("/get_reward", content=chunks)
    assert resp.status_code == 413 and "exceeds the limit of 4096 bytes" in resp.json()["detail"]
    _ok(client)


def test_scoring_failures_are_500_for_that_request_only(client):
    resp = client.post("/get_reward", json={"query": ["boom"]})
    assert resp.status_code == 500 and "model exploded" in resp.json()["detail"]
    resp = client.post("/get_reward", json={"query": ["nan"]})
    assert resp.status_code == 500 and "non-finite" in resp.json()["detail"]
    _ok(client)


def test_bearer_token_is_required_when_configured(auth_client):
    for headers, piece in ((None, "missing bearer token"), ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
                           ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token")):
        resp = auth_client.post("/get_reward", json=VALID, headers=headers)
        assert resp.status_code == 401 and piece in resp.json()["detail"]
        assert resp.headers["www-authenticate"] == "Bearer"
        _ok(auth_client, {"Authorization": f"Bearer {TOKEN}"})
    # Auth comes before the body is read: an unauthenticated huge body is a 401, not a 413.
    assert auth_client.post("/get_reward", content=b" " * 10_000).status_code == 401


def test_health_shows_details_only_to_authorised_callers(client, auth_client):
    assert client.get("/health").json() == {"status": "ok", "checkpoint": "/ckpt"}
    assert auth_client.get("/health").json() == {"status": "ok"}
    assert auth_client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()["checkpoint"] == "/ckpt"
    assert client.get("/get_reward").status_code == 405 and client.get("/docs").status_code == 404


def test_protocol_functions_directly():
    req = parse_reward_request(json.dumps(VALID).encode(), LIMITS)
    assert len(req) == 2 and req.prompts == VALID["prompts"] and req.labels == [None, "x"]
    check_bearer(None, None)  # auth off
    with pytest.raises(RequestError) as err:
        check_bearer("Bearer nope", token_digest(TOKEN))
    assert err.value.status == 401
    check_bearer(f"bearer  {TOKEN} ", token_digest(TOKEN))  # scheme case and spaces tolerated
