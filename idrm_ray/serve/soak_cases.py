"""The soak's traffic (`serve/soak.py`): the valid and invalid request cases, each with
the answer it must get, and the clients that send them until the deadline."""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass

from idrm_ray.serve.protocol import Limits

__all__ = ["MIB", "Case", "Record", "drive", "invalid_cases", "valid_cases"]

MIB = 1 << 20
WORDS = ("the cat likes the ball and a dog sees it while we talk about rewards models data "
         "human assistant answer question why how what when 0123 4567 89 , . ? !").split()


@dataclass(frozen=True)
class Case:
    """One kind of request: what is sent and the status it must get."""

    name: str
    body: bytes
    expect: int  # 200 for a valid request, else the 4xx it must get
    content_type: str | None = "application/json"
    method: str = "POST"
    path: str = "/get_reward"
    n_queries: int = 0  # valid requests: rewards expected

    @property
    def valid(self) -> bool:
        return self.expect == 200


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def valid_cases(limits: Limits, *, seed: int = 0, n: int = 48, long_chars: int = 20_000) -> list[Case]:
    """Valid requests of varied batch size (1..max_batch) and length (a few words to a
    query longer than the model's `max_len`, truncated as in training), prompts given or
    not, and one sent as text/plain (the body is read as JSON whatever its Content-Type)."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        batch = max(1, min(rng.choice([1, 1, 1, 1, 2, 4, 8, limits.max_batch]) if i else 1, limits.max_batch))
        # Long texts in small batches only: a request stays well under a second of CPU.
        n_words = rng.choice([2, 8, 30, 120, 400] if batch <= 2 else [2, 8, 30, 120] if batch <= 8 else [2, 8, 30])
        prompts = [f"Human: {_text(rng, rng.randint(1, 20))}?\n\nAssistant:" for _ in range(batch)]
        queries = [p + " " + _text(rng, max(1, int(n_words * rng.uniform(0.5, 1.5)))) + "</s>" for p in prompts]
        payload: dict = {"query": queries}
        if i % 2 == 0:
            payload["prompts"], payload["labels"] = prompts, [None] * batch
        body = json.dumps(payload).encode()
        if len(body) <= limits.max_body_bytes:
            cases.append(Case(f"valid_b{batch}", body, 200, n_queries=batch))
    long_chars = min(long_chars, limits.max_query_chars, limits.max_body_bytes // 2)
    prompt = "Human: a long one?\n\nAssistant:"
    long_query = prompt + " " + ("the cat likes the ball " * (long_chars // 23 + 1))[: long_chars - len(prompt) - 1]
    cases.append(Case("valid_long", json.dumps({"query": [long_query], "prompts": [prompt]}).encode(), 200,
                      n_queries=1))
    cases.append(Case("valid_text_plain", json.dumps({"query": ["Human: hi\n\nAssistant: hello"]}).encode(), 200,
                      content_type="text/plain", n_queries=1))
    return cases


def invalid_cases(limits: Limits, *, max_len: int | None = None, eos_text: str | None = None) -> list[Case]:
    """Each refusal the server must give: (name, body, expected 4xx)."""
    q = ["Human: hi\n\nAssistant: hello"]
    js = lambda obj: json.dumps(obj).encode()  # noqa: E731
    cases = [
        Case("malformed_json", b'{"query": ["a"', 400),
        Case("not_utf8", b'{"query": ["\xff\xfe"]}', 400),
        Case("empty_body", b"", 400),
        Case("deep_nesting", b"[" * min(50_000, limits.max_body_bytes - 1), 400),
        Case("huge_integer", b'{"query": ["a"], "labels": [' + b"9" * 5000 + b"]}", 400),
        Case("wrong_content_type_form", b"query=hello&prompts=hi", 400,
             content_type="application/x-www-form-urlencoded"),
        Case("top_level_list", js(q), 422),
        Case("json_null", b"null", 422),
        Case("missing_query", js({"prompts": q}), 422),
        Case("query_not_a_list", js({"query": q[0]}), 422),
        Case("query_item_int", js({"query": [q[0], 3]}), 422),
        Case("query_item_null", js({"query": [None]}), 422),
        Case("prompts_wrong_type", js({"query": q, "prompts": "hi"}), 422),
        Case("prompts_length_mismatch", js({"query": q, "prompts": ["a", "b"]}), 422),
        Case("labels_wrong_type", js({"query": q, "labels": {"a": 1}}), 422),
        Case("empty_query_list", js({"query": []}), 422),
        Case("lone_surrogate", b'{"query": ["Human: hi\\ud800"]}', 422),
        Case("too_many_queries", js({"query": q * (limits.max_batch + 1)}), 413),
        Case("oversize_body", b'{"query": ["' + b"x" * limits.max_body_bytes + b'"]}', 413),
        Case("wrong_method_get", b"", 405, content_type=None, method="GET"),
        Case("unknown_path", js({"query": q}), 404, path="/get_rewards"),
    ]
    if limits.max_query_chars + 20 <= limits.max_body_bytes:
        cases.append(Case("query_too_many_chars", js({"query": ["x" * (limits.max_query_chars + 1)]}), 413))
    if max_len and eos_text:
        body = js({"query": [eos_text * (max_len + 1)]})  # special tokens alone beyond max_len
        if len(eos_text) * (max_len + 1) <= limits.max_query_chars and len(body) <= limits.max_body_bytes:
            cases.append(Case("specials_over_max_len", body, 413))
    return cases



@dataclass(frozen=True)
class Record:
    t: float  # start, seconds since the soak started
    case: str
    valid: bool
    status: str  # "200", "422", ... or the transport error's name
    latency_ms: float
    ok: bool  # the status and body it had to get
    detail: str = ""


def _check(case: Case, status: int, body: object) -> tuple[bool, str]:
    if case.valid:
        rewards = body.get("rewards") if isinstance(body, dict) else None
        if status == 200 and isinstance(rewards, list) and len(rewards) == case.n_queries and all(
                isinstance(r, (int, float)) and math.isfinite(r) for r in rewards):
            return True, ""
        return False, str(body)[:300]
    detail = body.get("detail") if isinstance(body, dict) else None
    if status == case.expect and isinstance(detail, str) and detail.strip():
        return True, detail[:300]
    return False, str(body)[:300]


async def drive(base_url: str, valid: list[Case], invalid: list[Case], *, duration_s: float, clients: int,
                 invalid_fraction: float, request_timeout_s: float, seed: int, token: str | None,
                 t0: float) -> list[Record]:
    import aiohttp

    records: list[Record] = []
    deadline = t0 + duration_s
    turn = iter(range(1 << 62))  # invalid cases in turn across clients: each is sent about equally often
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    async def client(k: int, session) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline:
            case = invalid[next(turn) % len(invalid)] if rng.random() < invalid_fraction else rng.choice(valid)
            headers = dict(auth)
            if case.content_type:
                headers["Content-Type"] = case.content_type
            start = time.monotonic()
            try:
                async with session.request(case.method, base_url + case.path, data=case.body or None,
                                           headers=headers) as resp:
                    raw = await resp.read()
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
                    ok, detail = _check(case, resp.status, body)
                    status = str(resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                status, ok, detail = type(exc).__name__, False, str(exc)[:300]
            records.append(Record(start - t0, case.name, case.valid, status, (time.monotonic() - start) * 1000, ok,
                                  detail))

    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        tasks = [asyncio.create_task(client(k, session)) for k in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=duration_s + request_timeout_s + 10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return records
