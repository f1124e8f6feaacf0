"""The soak's report (`serve/soak.py`): answers by status and by case, latency and
replica RSS per time window, RSS growth after warm-up, the verdict, and its JSON/Markdown."""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

from idrm_ray.serve.loadtest import percentile
from idrm_ray.serve.soak_cases import MIB, Record

__all__ = ["summarize", "write_report"]

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
