"""OpenRLHF's own `train_ppo_ray` argument parser and checks, without importing vLLM.

`openrlhf/cli/train_ppo_ray.py` builds its parser inline under `if __name__ == "__main__":`
and imports vLLM and flash-attn at the top, so neither `import` nor `--help` works on a
machine without CUDA. We read the installed file, keep its stdlib imports and the
`__main__` block minus the final `train(args)` call, and run that: the real parser (types,
choices, nargs) and OpenRLHF's own post-parse checks (the asserts that would otherwise fail
on the cluster minutes into a job). Its `print` warnings are captured and returned.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib.util
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["OPENRLHF_INSTALL_HINT", "FlagCheck", "FlagError", "OpenRLHFMissing", "check_ppo_flags", "ppo_cli_path",
           "ppo_flag_names"]

PPO_MODULE = "openrlhf.cli.train_ppo_ray"
OPENRLHF_INSTALL_HINT = (
    "install it with `pip install 'idrm_ray[ppo]'` (GPU nodes: pulls vLLM and flash-attn), or on a CPU "
    "machine only to check commands: `pip install --no-deps openrlhf==0.11.2 pylatexenc`"
)


class OpenRLHFMissing(RuntimeError):
    """OpenRLHF is not installed where the check runs."""


class FlagError(ValueError):
    """The installed OpenRLHF refuses the command line (unknown flag, bad value, failed assert)."""


@dataclass(frozen=True)
class FlagCheck:
    args: object  # OpenRLHF's hierarchized namespace after its own post-parse fix-ups
    warnings: list[str] = field(default_factory=list)


class _ParserError(Exception):
    pass


def ppo_cli_path() -> Path:
    """The installed `train_ppo_ray.py` (found without importing it)."""
    try:
        spec = importlib.util.find_spec(PPO_MODULE)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.origin:
        raise OpenRLHFMissing(f"OpenRLHF is not installed: {OPENRLHF_INSTALL_HINT}")
    return Path(spec.origin)


def _main_block(tree: ast.Module) -> ast.If:
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node
    raise RuntimeError(f"{PPO_MODULE}: no `if __name__ == '__main__':` block; OpenRLHF's layout changed")


def _is_parse_args(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Assign) and "parse_args(" in ast.unparse(stmt.value)


def _is_train_call(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and ast.unparse(stmt.value).startswith("train(")


def _compile(path: Path):
    """(parser-building code, post-parse code) from the installed file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    stdlib = [
        n for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        and all((a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0] in sys.stdlib_module_names
                for a in n.names)
    ]
    body = _main_block(tree).body
    split = next((i for i, s in enumerate(body) if _is_parse_args(s)), None)
    if split is None:
        raise RuntimeError(f"{PPO_MODULE}: no `args = parser.parse_args()`; OpenRLHF's layout changed")
    build = ast.Module(body=stdlib + body[:split], type_ignores=[])
    post = ast.Module(body=[s for s in body[split + 1 :] if not _is_train_call(s)], type_ignores=[])
    return compile(build, str(path), "exec"), compile(post, str(path), "exec")


def _parser(path: Path) -> argparse.ArgumentParser:
    build, _ = _compile(path)
    ns: dict = {"__name__": "idrm_ray_openrlhf_flags"}
    exec(build, ns)  # noqa: S102 - the installed OpenRLHF's own parser code
    parser = ns["parser"]

    def error(message: str):
        raise _ParserError(message)

    parser.error = error  # argparse would print usage and sys.exit(2)
    return parser


def ppo_flag_names(path: Path | None = None) -> list[str]:
    """Every `--flag` the installed `train_ppo_ray` accepts."""
    parser = _parser(path or ppo_cli_path())
    return sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))


def _unknown_message(unknown: list[str], known: list[str]) -> str:
    parts = []
    for flag in unknown:
        name = flag.split("=", 1)[0]
        guess = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        parts.append(f"{name} (did you mean {guess[0]}?)" if guess else name)
    return "unknown flag(s) for the installed OpenRLHF train_ppo_ray: " + ", ".join(parts)


def check_ppo_flags(flags: list[str], *, path: Path | None = None) -> FlagCheck:
    """Parse `flags` (the part after `-m openrlhf.cli.train_ppo_ray`) with the installed
    OpenRLHF and run its post-parse checks. Raises `FlagError` with one clear line."""
    path = path or ppo_cli_path()
    parser = _parser(path)
    known = ppo_flag_names(path)
    try:
        args, unknown = parser.parse_known_args(flags)
    except _ParserError as exc:
        raise FlagError(f"OpenRLHF train_ppo_ray refuses the command: {exc}") from None
    if unknown:
        raise FlagError(_unknown_message([u for u in unknown if u.startswith("-")] or unknown, known))
    _, post = _compile(path)
    ns: dict = {"__name__": "idrm_ray_openrlhf_flags", "args": args, "parser": parser}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(post, ns)  # noqa: S102 - OpenRLHF's own validation
    except AssertionError as exc:
        raise FlagError(f"OpenRLHF train_ppo_ray check failed: {exc or 'assertion without message'}") from None
    warnings = [line.strip() for line in out.getvalue().splitlines() if line.strip()]
    return FlagCheck(args=ns["args"], warnings=warnings)
