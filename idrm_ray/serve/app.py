"""The HTTP endpoints, shared by the Ray Serve deployment and the plain uvicorn backend.

`RewardService` does everything a request needs before and after scoring: bearer auth
(before the body is read), the body-size cap (Content-Length first, then while streaming),
JSON validation (`protocol.py`), and the answer. Scoring is an injected coroutine, so the
same service runs over a local `RewardScorer` (plain backend, tests) or Ray Serve's
dynamic batching. Errors are JSON `{"detail": ...}` with the protocol's status; anything
unexpected in scoring is a 500 for that request only, and the server keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from idrm_ray.serve.protocol import (
    Limits,
    RequestError,
    RewardRequest,
    check_bearer,
    parse_reward_request,
    reward_response,
)
from idrm_ray.serve.scoring import QueryNotAsTrained, QueryTooLong, RewardScorer, Scores, all_finite

__all__ = ["RewardService", "build_app", "install_error_handlers", "local_score_fn"]

log = logging.getLogger("idrm_ray.serve")
ScoreFn = Callable[[RewardRequest], Awaitable[Scores]]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed `max_bytes`."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length header {length!r}") from None
        if declared > max_bytes:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class RewardService:
    def __init__(self, score: ScoreFn, *, limits: Limits, token_digest: bytes | None, info: dict | None = None):
        self.score, self.limits, self.digest = score, limits, token_digest
        self.info = dict(info or {})

    async def get_reward(self, request: Request) -> JSONResponse:
        check_bearer(request.headers.get("authorization"), self.digest)
        body = await read_body(request, self.limits.max_body_bytes)
        req = parse_reward_request(body, self.limits)
        try:
            scores = await self.score(req)
        except QueryTooLong as exc:
            raise RequestError(413, str(exc)) from None
        except QueryNotAsTrained as exc:
            raise RequestError(422, str(exc)) from None
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed request must not stop the server
            log.exception("scoring failed")
            raise RequestError(500, f"scoring failed: {type(exc).__name__}: {exc}") from None
        if not all_finite(scores.rewards) or not all_finite(scores.raw):
            raise RequestError(500, "the reward model produced a non-finite reward for this request")
        return JSONResponse(reward_response(scores.rewards, scores.raw))

    async def health(self, request: Request) -> JSONResponse:
        """Liveness for probes; model details only to callers that may score."""
        body = {"status": "ok"}
        try:
            check_bearer(request.headers.get("authorization"), self.digest)
            body.update(self.info)
        except RequestError:
            pass
        return JSONResponse(body)


def _error_response(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error_response(exc)

    app.add_exception_handler(RequestError, on_request_error)


def new_app() -> FastAPI:
    # No interactive docs or schema: nothing to expose beyond the two endpoints.
    app = FastAPI(title="idrm_ray reward server", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    return app


def local_score_fn(scorer: RewardScorer) -> ScoreFn:
    """Score in a worker thread so the event loop keeps accepting requests."""

    async def score(req: RewardRequest) -> Scores:
        return await asyncio.to_thread(scorer.score, req.queries, req.prompts)

    return score


def build_app(service: RewardService) -> FastAPI:
    """The plain (no Ray) app: `uvicorn.run(build_app(service), host=..., port=...)`."""
    app = new_app()

    @app.get("/health")
    async def health(request: Request):
        return await service.health(request)

    @app.post("/get_reward")
    async def get_reward(request: Request):
        return await service.get_reward(request)

    app.state.service = service
    return app
