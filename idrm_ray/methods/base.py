"""What a family's procedure works on: one method's run (`MethodRun`) and the driver-side
tools it may call (`Tools`, implemented over Ray in `multirun/tools.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from idrm_ray.configtree.base import param, require
from idrm_ray.core.method_kind import MethodKind, method_kind
from idrm_ray.core.types import PreferenceExample


@dataclass(frozen=True)
class EnsembleConfig:
    """The M reward models behind LF flips, AM proxy margins and WARM members; they run as
    parallel Ray Train runs, as many at once as the student resources allow."""

    members: int = param(3, "M (Secrets-II uses 10 for LF; WARM's paper 5-10).")
    max_steps: int | None = param(None, "Optimizer steps per member (null: as optim).")
    concurrency: int = param(0, "Members trained at once (0: as many as the cluster's student resources fit).")

    def __post_init__(self):
        require(self, self.members >= 1, "members", "must be >= 1")
        require(self, self.max_steps is None or self.max_steps >= 1, "max_steps", "use null, or >= 1")
        require(self, self.concurrency >= 0, "concurrency", "must be >= 0 (0: automatic)")


class Tools(Protocol):
    """The driver's training and scoring calls (each a Ray Train run or Ray task)."""

    train_one: Callable[..., dict]  # driver.train_one(cfg, plan, *, method, train, out_name, ...)

    def train_members(self, cfg, plan, *, kind: str, folder: str, train, diverse_lr: bool = True,
                      **common) -> list[dict]: ...

    def score_gaps(self, cfg, checkpoints: list[str], examples: list[PreferenceExample]) -> list: ...

    def average_checkpoints(self, cfg, sources: list[str], out: Path, *, metadata: dict) -> Path: ...

    def evaluate_checkpoint(self, cfg, checkpoint: str, examples: list[PreferenceExample]) -> dict: ...


@dataclass(frozen=True)
class MethodRun:
    """One method trained into run_dir/name. `members` reuses ensembles the caller already
    trained ({"bt": rows, "id": rows}, e.g. shared by `idrm-ray compare`)."""

    cfg: Any
    plan: Any
    method: str
    name: str
    train: list[PreferenceExample]
    evals: list[PreferenceExample]
    student_dir: str
    teacher_dir: str | None
    run_dir: Path
    tools: Tools
    members: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def kind(self) -> MethodKind:
        return method_kind(self.method)

    @property
    def common(self) -> dict:
        """The keywords every train_one / train_members call of this run shares."""
        return dict(student_dir=self.student_dir, teacher_dir=self.teacher_dir, evals=self.evals,
                    run_dir=self.run_dir)

    def train_once(self, train: list[PreferenceExample] | None = None, **kwargs) -> dict:
        """train_one of this method (or kwargs' method) into run_dir/name (or kwargs' out_name)."""
        kwargs = {"method": self.method, "out_name": self.name, **kwargs}
        return self.tools.train_one(self.cfg, self.plan, train=self.train if train is None else train,
                                    **self.common, **kwargs)
