"""A bounded soak of the reward server on loopback: mixed valid and invalid traffic for a
fixed time, then a verdict on 5xx answers, refusals and resident memory.

    python -m idrm_ray.serve.soak --minutes 10               # a tiny saved model, Ray Serve, loopback
    python -m idrm_ray.serve.soak --checkpoint DIR --seconds 90 --window-s 10
    idrm-ray serve --checkpoint DIR --soak 10 [--out DIR]   # the same from the main CLI

A few concurrent clients (`clients`) send, until the deadline, valid requests (batch sizes
1..`server.max_batch`, short to over-`max_len` queries, with and without prompts) and, with
probability `invalid_fraction`, one of the invalid cases in turn (malformed JSON, missing
fields, wrong types, empty lists, oversize bodies/batches/strings, wrong content-type,
wrong method or path): each has the 4xx it must get, with a JSON `{"detail": ...}` body.
The server process's RSS (the Serve replica actor; the proxy is reported too) is sampled
every second. The report (`soak.json`, `soak.md`) has the answers by status code and by
case, p50/p99 latency and median RSS per time window, and RSS after warm-up vs at the end
(each the median over one window, so a large batch's freed activations are not growth).

It passes (exit 0) when there is no 5xx and no transport error, every valid request got
200 with one finite reward per query, every invalid one got its 4xx with a detail, and the
replica's RSS grew by less than `max_rss_growth` (10%) from the end of warm-up to the end.
The soak always stops by itself: clients start nothing after the deadline, and each
request has its own timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from idrm_ray.serve.loadtest import percentile
from idrm_ray.serve.protocol import Limits

__all__ = ["Case", "RssSampler", "invalid_cases", "main", "read_rss", "run_soak", "serve_pids", "soak",
           "valid_cases", "write_report"]

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


# -- resident memory ---------------------------------------------------------------------

def read_rss(pid: int) -> int | None:
    """Resident set size in bytes (psutil, else /proc/<pid>/status); None once it is gone."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the RSS of named processes every `interval_s` in a daemon thread."""

    def __init__(self, pids: dict[str, int], *, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.pids, self.interval_s, self.clock = dict(pids), interval_s, clock
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.t0 = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idrm-soak-rss", daemon=True)

    def sample(self) -> None:
        t = self.clock() - self.t0
        for name, pid in self.pids.items():
            rss = read_rss(pid)
            if rss is not None:
                self.samples[name].append((t, rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> "RssSampler":
        self.t0 = self.clock()
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()  # the end figure: after the last request


def serve_pids(app_name: str, *, timeout_s: float = 30.0) -> dict[str, int]:
    """Process ids of the Serve application's replica actors (`replica <id>`) and of the
    HTTP proxy (`proxy`), asked of each actor itself (Ray's named actors, no dashboard)."""
    import ray

    found: dict[str, int] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name, namespace = actor["name"], actor["namespace"]
        if name.startswith(f"SERVE_REPLICA::{app_name}#"):
            label = "replica " + name.rsplit("#", 1)[-1]
        elif "SERVE_PROXY_ACTOR" in name:
            label = "proxy"
        else:
            continue
        handle = ray.get_actor(name, namespace=namespace)
        found[label] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=timeout_s)
    if not any(label.startswith("replica") for label in found):
        raise RuntimeError(f"no Serve replica actor of application {app_name!r} found to sample its memory")
    return found


# -- traffic -----------------------------------------------------------------------------

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


async def _drive(base_url: str, valid: list[Case], invalid: list[Case], *, duration_s: float, clients: int,
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


# -- report ------------------------------------------------------------------------------

def _ms(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 2)


def _windows(records: list[Record], rss: dict[str, list[tuple[float, int]]], *, duration_s: float,
             window_s: float, warmup_s: float) -> list[dict]:
    out = []
    n = max(1, math.ceil(duration_s / window_s - 1e-9))
    for w in range(n):
        lo, hi = w * window_s, min((w + 1) * window_s, duration_s)
        rows = [r for r in records if lo <= r.t < hi or (w == n - 1 and r.t >= hi)]
        ok_valid = [r.latency_ms for r in rows if r.valid and r.ok]
        invalid = [r.latency_ms for r in rows if not r.valid]
        row = {"start_s": round(lo, 1), "end_s": round(hi, 1), "warmup": lo < warmup_s, "requests": len(rows),
               "valid_ok": len(ok_valid), "invalid": len(invalid),
               "p50_ms": _ms(percentile(ok_valid, 50)), "p99_ms": _ms(percentile(ok_valid, 99)),
               "invalid_p50_ms": _ms(percentile(invalid, 50)), "invalid_p99_ms": _ms(percentile(invalid, 99)),
               "5xx": sum(r.status.startswith("5") for r in rows),
               "failed": sum(not r.ok for r in rows), "rss_mib": {}}
        for name, samples in rss.items():
            inside = [b for t, b in samples if lo <= t < hi] or [b for t, b in samples if t <= hi][-1:]
            if inside:
                row["rss_mib"][name] = round(_median(inside) / MIB, 1)
        out.append(row)
    return out


def _median(values: list[int]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _rss_summary(samples: list[tuple[float, int]], warmup_s: float, span_s: float) -> dict:
    """RSS after warm-up vs at the end, each the median of the samples over `span_s`
    (the first span after warm-up; the last span of traffic plus the sample after it), so a
    transient peak (a large batch's activations, freed right after) is not read as growth."""
    if not samples:
        return {"samples": 0}
    end_t = samples[-1][0]
    first = [b for t, b in samples if warmup_s <= t <= warmup_s + span_s] or [samples[-1][1]]
    last = [b for t, b in samples if t >= max(warmup_s, end_t - span_s)] or [samples[-1][1]]
    after = [b for t, b in samples if t >= warmup_s] or [samples[-1][1]]
    warm, end = _median(first), _median(last)
    return {"samples": len(samples), "start_mib": round(samples[0][1] / MIB, 1),
            "warmup_mib": round(warm / MIB, 1), "warmup_span_s": [round(warmup_s, 1), round(warmup_s + span_s, 1)],
            "end_mib": round(end / MIB, 1), "end_span_s": [round(max(warmup_s, end_t - span_s), 1), round(end_t, 1)],
            "final_mib": round(samples[-1][1] / MIB, 1),
            "min_after_warmup_mib": round(min(after) / MIB, 1), "peak_after_warmup_mib": round(max(after) / MIB, 1),
            "growth_pct": round(100 * (end - warm) / warm, 2)}


def summarize(records: list[Record], rss: dict[str, list[tuple[float, int]]], *, duration_s: float,
              window_s: float, warmup_s: float, max_rss_growth: float, settings: dict) -> dict:
    statuses = Counter(r.status for r in records)
    by_case: dict[str, dict] = defaultdict(lambda: {"sent": 0, "failed": 0, "statuses": Counter(), "example": ""})
    for r in records:
        c = by_case[r.case]
        c["sent"] += 1
        c["failed"] += not r.ok
        c["statuses"][r.status] += 1
        if r.detail and (not c["example"] or (not r.ok and not c.get("failed_example"))):
            c["example"] = r.detail
            c["failed_example"] = c.get("failed_example") or not r.ok
    cases = {name: {"sent": c["sent"], "failed": c["failed"], "statuses": dict(c["statuses"]),
                    "detail": c["example"]} for name, c in sorted(by_case.items())}
    memory = {name: _rss_summary(samples, warmup_s, window_s) for name, samples in rss.items()}
    gated = {name: m for name, m in memory.items() if not name.startswith("proxy")}
    growth = max((m.get("growth_pct", 0.0) for m in gated.values()), default=0.0)
    five_xx = sum(n for s, n in statuses.items() if s.startswith("5"))
    transport = sum(n for s, n in statuses.items() if not s.isdigit())
    valid_ok = [r.latency_ms for r in records if r.valid and r.ok]
    checks = {
        "no_5xx": five_xx == 0,
        "no_transport_errors": transport == 0,
        "valid_all_200": all(r.ok for r in records if r.valid),
        "invalid_all_expected_4xx": all(r.ok for r in records if not r.valid),
        "rss_growth_under_limit": bool(gated) and growth < 100 * max_rss_growth,
    }
    return {
        "passed": all(checks.values()), "checks": checks, "settings": settings,
        "requests": len(records), "valid": sum(r.valid for r in records),
        "invalid": sum(not r.valid for r in records), "5xx": five_xx, "transport_errors": transport,
        "statuses": dict(sorted(statuses.items())),
        "latency_valid_ok": {"count": len(valid_ok), "p50_ms": _ms(percentile(valid_ok, 50)),
                             "p99_ms": _ms(percentile(valid_ok, 99)),
                             "max_ms": round(max(valid_ok), 2) if valid_ok else None},
        "rss_growth_pct": growth, "memory": memory, "cases": cases,
        "windows": _windows(records, rss, duration_s=duration_s, window_s=window_s, warmup_s=warmup_s),
    }


def _markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Reward-server soak: {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"{s['duration_s']:.0f} s on {s['base_url']}, {s['clients']} clients, "
             f"{100 * s['invalid_fraction']:.0f}% invalid, windows of {s['window_s']:g} s, "
             f"warm-up {s['warmup_s']:g} s, backend {s.get('backend', '?')}.", "",
             "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'ok' if v else 'FAILED'} |" for k, v in report["checks"].items()]
    lat = report["latency_valid_ok"]
    lines += ["", f"{report['requests']} requests ({report['valid']} valid, {report['invalid']} invalid); "
              f"5xx: {report['5xx']}; transport errors: {report['transport_errors']}; valid answers p50 "
              f"{lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms.", "",
              "## Answers by status code", "", "| status | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["statuses"].items()]
    lines += ["", "## Latency and memory per window (valid = valid requests answered 200)", "",
              "| window (s) | requests | valid | p50 ms | p99 ms | invalid | invalid p50 ms | invalid p99 ms | 5xx "
              "| median RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for w in report["windows"]:
        rss = ", ".join(f"{k} {v}" for k, v in w["rss_mib"].items())
        tag = " (warm-up)" if w["warmup"] else ""
        lines.append(f"| {w['start_s']:g}-{w['end_s']:g}{tag} | {w['requests']} | {w['valid_ok']} | {w['p50_ms']} | "
                     f"{w['p99_ms']} | {w['invalid']} | {w['invalid_p50_ms']} | {w['invalid_p99_ms']} | {w['5xx']} | "
                     f"{rss} |")
    lines += ["", f"## Resident memory (gate: replica growth < {100 * s['max_rss_growth']:g}% from after warm-up "
              "to the end, each the median RSS over one window; the proxy is reported, not gated)", "",
              "| process | pid | start MiB | after warm-up MiB | end MiB | final MiB | min / peak after warm-up MiB "
              "| growth % |", "|---|---|---|---|---|---|---|---|"]
    for name, m in report["memory"].items():
        lines.append(f"| {name} | {s['pids'].get(name)} | {m.get('start_mib')} | {m.get('warmup_mib')} | "
                     f"{m.get('end_mib')} | {m.get('final_mib')} | {m.get('min_after_warmup_mib')} / "
                     f"{m.get('peak_after_warmup_mib')} | {m.get('growth_pct')} |")
    lines += ["", "## Cases", "", "| case | sent | failed | statuses | detail (first) |", "|---|---|---|---|---|"]
    for name, c in report["cases"].items():
        detail = c["detail"].replace("|", "\\|").replace("\n", " ")[:120]
        lines.append(f"| {name} | {c['sent']} | {c['failed']} | {c['statuses']} | {detail} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "soak.json", out / "soak.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(_markdown(report))
    return js, md


def run_soak(base_url: str, *, limits: Limits, duration_s: float, out_dir: str | Path, pids: dict[str, int],
             window_s: float = 30.0, warmup_s: float | None = None, clients: int = 4,
             invalid_fraction: float = 0.3, max_rss_growth: float = 0.10, request_timeout_s: float = 60.0,
             rss_interval_s: float = 1.0, max_len: int | None = None, eos_text: str | None = None,
             token: str | None = None, seed: int = 0, extra: dict | None = None,
             out: Callable[[str], None] = print) -> dict:
    """Soak a running server at `base_url`; writes `soak.json` and `soak.md`, returns the report."""
    if duration_s <= 0 or window_s <= 0 or clients < 1 or not 0 <= invalid_fraction <= 1:
        raise ValueError("need duration_s > 0, window_s > 0, clients >= 1 and 0 <= invalid_fraction <= 1")
    warmup_s = min(60.0, duration_s / 10) if warmup_s is None else warmup_s
    valid = valid_cases(limits, seed=seed)
    invalid = invalid_cases(limits, max_len=max_len, eos_text=eos_text)
    settings = {"base_url": base_url, "duration_s": duration_s, "window_s": window_s, "warmup_s": warmup_s,
                "clients": clients, "invalid_fraction": invalid_fraction, "max_rss_growth": max_rss_growth,
                "request_timeout_s": request_timeout_s, "pids": dict(pids), "seed": seed,
                "limits": {"max_body_bytes": limits.max_body_bytes, "max_batch": limits.max_batch,
                           "max_query_chars": limits.max_query_chars},
                "valid_cases": len(valid), "invalid_cases": [c.name for c in invalid], **(extra or {})}
    out(f"soak: {duration_s:.0f} s, {clients} clients, {100 * invalid_fraction:.0f}% invalid "
        f"({len(invalid)} cases), RSS of {pids}")
    sampler = RssSampler(pids, interval_s=rss_interval_s).start()
    records = asyncio.run(_drive(base_url, valid, invalid, duration_s=duration_s, clients=clients,
                                 invalid_fraction=invalid_fraction, request_timeout_s=request_timeout_s,
                                 seed=seed, token=token, t0=sampler.t0))
    sampler.stop()
    report = summarize(records, sampler.samples, duration_s=duration_s, window_s=window_s, warmup_s=warmup_s,
                       max_rss_growth=max_rss_growth, settings=settings)
    js, md = write_report(report, out_dir)
    lat = report["latency_valid_ok"]
    out(f"soak: {'PASSED' if report['passed'] else 'FAILED'}: {report['requests']} requests, statuses "
        f"{report['statuses']}, valid p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms, replica RSS growth "
        f"{report['rss_growth_pct']}% after warm-up; report {md} and {js.name}")
    return report


def _eos_text(checkpoint: str) -> str | None:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(checkpoint).eos_token
    except (OSError, ValueError):
        return None


def soak(cfg, *, duration_s: float, out_dir: str | Path | None = None, out: Callable[[str], None] = print,
         **kwargs) -> int:
    """Start the server of `cfg` on loopback, soak it, stop it. Exit status: 0 passed, 1 failed."""
    from idrm_ray.config import ConfigError
    from idrm_ray.serve.runner import is_loopback, resolve_token, start_server

    s = cfg.server
    if not is_loopback(s.host):
        raise ConfigError(f"the soak runs on loopback only: server.host={s.host} (use 127.0.0.1)")
    out_dir = Path(out_dir or Path("runs") / time.strftime("soak-%Y%m%d-%H%M%S"))
    token = resolve_token(s.token_env)
    limits = Limits(max_body_bytes=s.max_body_bytes, max_batch=s.max_batch, max_query_chars=s.max_query_chars)
    handle = start_server(cfg, out=out)
    try:
        pids = serve_pids(s.app_name) if s.backend == "ray" else {"plain server + clients": os.getpid()}
        extra = {"backend": s.backend, "checkpoint": cfg.model.checkpoint, "max_len": cfg.model.max_len,
                 "replicas": cfg.deployment.num_replicas}
        report = run_soak(handle.base_url, limits=limits, duration_s=duration_s, out_dir=out_dir, pids=pids,
                          max_len=cfg.model.max_len, eos_text=_eos_text(cfg.model.checkpoint), token=token,
                          extra=extra, out=out, **kwargs)
    finally:
        handle.stop()
    return 0 if report["passed"] else 1


def _tiny_checkpoint(folder: Path) -> str:
    from idrm_ray.core import tiny
    from idrm_ray.core.reward_model import save_reward_model

    tok = tiny.train_student_tokenizer()
    return str(save_reward_model(tiny.build_tiny_student(tok, num_layers=2), tok, folder / "model"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    from idrm_ray.config import ConfigError, load_config
    from idrm_ray.serve.config import ServeJobConfig

    p = argparse.ArgumentParser(prog="python -m idrm_ray.serve.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="reward model to serve (default: a tiny one saved under --out)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    when.add_argument("--seconds", type=float, help="soak duration in seconds instead")
    p.add_argument("--window-s", type=float, help="latency window (default 30 s, or duration/10 when shorter)")
    p.add_argument("--warmup-s", type=float, help="warm-up before the RSS baseline (default min(60 s, 10%%))")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--invalid-fraction", type=float, default=0.3, help="share of invalid requests (default 0.3)")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="RSS growth limit after warm-up (0.10)")
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--backend", choices=["ray", "plain"], default="ray")
    p.add_argument("--out", help="report folder (default runs/soak-<time>)")
    p.add_argument("--config", help="YAML serve config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the serve config")
    args = p.parse_args(argv)
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    out_dir = Path(args.out or Path("runs") / time.strftime("soak-%Y%m%d-%H%M%S"))
    try:
        checkpoint = args.checkpoint or _tiny_checkpoint(out_dir)
        overrides = [f"model.checkpoint={checkpoint}", f"server.port={args.port or _free_port()}",
                     f"server.backend={args.backend}", *args.overrides]
        cfg = load_config(ServeJobConfig, args.config, overrides)
        return soak(cfg, duration_s=duration, out_dir=out_dir, window_s=args.window_s or min(30.0, duration / 10),
                    warmup_s=args.warmup_s, clients=args.clients, invalid_fraction=args.invalid_fraction,
                    max_rss_growth=args.max_rss_growth)
    except (ConfigError, ValueError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
