"""The rows of an init report: one parameter, one coverage line."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .owners import MODEL_KIND, MODEL_LABEL

#: Measured and promised std agree if they differ by less than this many
#: standard errors of a sample std (σ/√(2n) for a normal sample), plus 0.1 %.
STD_TOLERANCE_SIGMAS = 6.0

DEFAULT_LABEL = "PyTorch default"


@dataclass(frozen=True)
class ParamReport:
    """One parameter of the report.

    ``kind`` is the record's kind (``rule``, ``pretrained``, ``user``,
    ``initializer``, ``unchanged``), or ``model`` for a parameter the record
    calls unchanged whose value the model's own code set (its
    ``_init_weights``, ``reset_parameters`` or constructor: ``rule_type``
    names it; :mod:`.owners`); ``rule_type``/``rule_args`` describe the
    owner; ``mean``/``std`` are measured (population std), ``None`` on
    ``meta``, on ``measured`` elements (all of them, or a random sample);
    ``promised_std`` is what the owning rule promises, if anything.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    kind: str
    rule_type: str
    rule_args: dict[str, Any]
    info: str
    declared_in: str
    mean: float | None = None
    std: float | None = None
    promised_std: float | None = None
    measured: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def at_default(self) -> bool:
        """Left at the PyTorch default (or untouched since construction)."""
        return self.kind == "unchanged"

    @property
    def rule_text(self) -> str:
        """``Type(arg=value, ...)`` for rules (without ``layer``/``param``), else the owner."""
        if self.kind == "unchanged":
            return DEFAULT_LABEL
        if self.kind == MODEL_KIND:
            return f"{MODEL_LABEL}: {self.rule_type}"
        if self.kind in ("rule", "pretrained"):
            # layer/param say what a rule targets, not what it writes: JSON keeps them
            args = ", ".join(f"{k}={_short(v)}" for k, v in self.rule_args.items()
                             if k not in ("layer", "param"))
            return f"{self.rule_type}({args})"
        return self.info

    @property
    def std_matches(self) -> bool | None:
        """Whether the measured std agrees with the promised one (None: nothing to compare).

        Agreement: |std − promised| ≤ 6·promised/√(2n) + 0.001·promised + 1e-7,
        six standard errors of the sample std of n normal draws (n: the elements
        measured, all of them or a sample).
        """
        n = self.measured or self.numel
        if self.std is None or self.promised_std is None or n < 2:
            return None
        if not math.isfinite(self.std):
            return False
        p = self.promised_std
        tol = STD_TOLERANCE_SIGMAS * p / math.sqrt(2 * n) + 1e-3 * p + 1e-7
        return abs(self.std - p) <= tol

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "device": self.device, "numel": self.numel, "kind": self.kind,
                "rule": {"type": self.rule_type, "args": _jsonable(self.rule_args)},
                "info": self.info, "declared_in": self.declared_in, "mean": _num(self.mean),
                "std": _num(self.std), "promised_std": _num(self.promised_std),
                "std_matches": self.std_matches, "measured": self.measured}


@dataclass(frozen=True)
class CoverageRow:
    """Parameters and elements owned by one rule (or by the PyTorch default)."""

    rule: str
    kind: str
    parameters: int
    elements: int

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "parameters": self.parameters,
                "elements": self.elements}



def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)



def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)
