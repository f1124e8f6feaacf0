"""A bounded HTTP load test of the reward server: N requests from C concurrent clients.

Bounded in count (exactly `requests` are sent) and in time (`timeout_s` for the whole run;
whatever has not finished by then counts as an error), so it always stops by itself.
A request is an error unless it answers 200 with one finite reward per query.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

__all__ = ["LoadStats", "percentile", "run_load_test"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LoadStats:
    requests: int
    concurrency: int
    completed: int
    errors: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        return (f"{self.requests} requests, concurrency {self.concurrency}: {self.errors} errors, "
                f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms, "
                f"{self.rps:.0f} req/s over {self.wall_s:.1f} s")

    def as_dict(self) -> dict:
        return {"requests": self.requests, "concurrency": self.concurrency, "completed": self.completed,
                "errors": self.errors, "wall_s": round(self.wall_s, 3), "p50_ms": round(self.p50_ms, 2),
                "p99_ms": round(self.p99_ms, 2), "max_ms": round(self.max_ms, 2), "rps": round(self.rps, 1),
                "statuses": dict(self.statuses), "first_error": self.first_error}


def _valid(body: object, n_queries: int) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("rewards"), list):
        return False
    rewards = body["rewards"]
    return len(rewards) == n_queries and all(isinstance(r, (int, float)) and math.isfinite(r) for r in rewards)


async def _run(url: str, payloads: list[dict], *, requests: int, concurrency: int, timeout_s: float,
               headers: dict) -> LoadStats:
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    next_index = iter(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in next_index:  # shared iterator: each index is taken exactly once
            payload = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                async with session.post(url, json=payload, headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    statuses[str(resp.status)] += 1
                    ok = resp.status == 200 and _valid(body, len(payload["query"]))
                    if not ok:
                        errors.append(f"status {resp.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
                errors.append(f"{type(exc).__name__}: {exc}")
                ok = False
            if ok:
                latencies.append((time.perf_counter() - start) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - start
    completed = len(latencies)
    failed = requests - completed
    if pending and not errors:
        errors.append(f"timed out after {timeout_s:.0f} s")
    return LoadStats(
        requests=requests, concurrency=concurrency, completed=completed, errors=failed, wall_s=wall,
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        max_ms=max(latencies) if latencies else float("nan"), statuses=dict(statuses),
        first_error=errors[0] if errors else "",
    )


def run_load_test(url: str, payloads: list[dict], *, requests: int = 2000, concurrency: int = 16,
                  timeout_s: float = 60.0, token: str | None = None) -> LoadStats:
    """Send `requests` POSTs (cycling over `payloads`) from `concurrency` clients."""
    if requests < 1 or concurrency < 1 or not payloads:
        raise ValueError("need requests >= 1, concurrency >= 1 and at least one payload")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(_run(url, payloads, requests=requests, concurrency=concurrency, timeout_s=timeout_s,
                            headers=headers))
