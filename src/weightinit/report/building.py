"""Building a report: from an init record and the live model, or from a plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch.nn as nn
from torch import Tensor

from .. import maths as F
from ..api import get_init_record
from ..errors import InitValueError
from ..planning import OpKind, Plan, RuleFill, UserCall
from ..record import InitRecord
from ..rules import BaseInit, VarianceScalingInit
from .entries import DEFAULT_LABEL, ParamReport
from .measuring import measure
from .model import Report
from .owners import MODEL_KIND, UNCHANGED, own_init, owner_module


def rule_description(rule: Any, kind: str, info: str) -> tuple[str, dict[str, Any]]:
    """(type, arguments) of the owner of a parameter, for the report."""
    if kind == "unchanged":
        return DEFAULT_LABEL, {}
    if isinstance(rule, BaseInit):
        args = dict(rule.args())
        if rule.layer:
            args["layer"] = list(rule.layer)
        if rule.param:
            args["param"] = list(rule.param)
        return rule.type_name, args
    if kind == "pretrained" and rule is not None:
        getter = getattr(rule, "args", None)
        return "Pretrained", dict(getter()) if callable(getter) else {}
    if kind == "user":
        return "user", {}
    return (type(rule).__name__ if rule is not None else kind), {}


def _role(rule: Any, module: nn.Module | None, param: Tensor) -> str:
    # Which of the rule's fills wrote ``param``: its constant bias or its weight fill.
    if isinstance(rule, BaseInit) and module is not None:
        try:
            for role, t in rule.module_targets(module):
                if t is param:
                    return role
        except Exception:  # a rule that cannot describe this module: the weight fill wrote it
            return "weight"
    return "weight"


def promised_std(rule: Any, role: str, shape: tuple[int, ...],
                 module: nn.Module | None = None) -> float | None:
    """The std a rule promises for a tensor it wrote in ``role`` (bias: 0, a constant).

    ``module`` is the module owning the tensor: VarianceScaling (and LeCun)
    count fans by what each unit is connected to (grouped and transposed
    convs, embeddings), so their promise depends on it.
    """
    if not isinstance(rule, BaseInit):
        return None
    if role == "bias":
        return 0.0
    if role not in ("weight", "param"):
        return None
    try:
        if isinstance(rule, VarianceScalingInit) and module is not None and role == "weight":
            std = F.variance_scaling_std(tuple(shape), rule.scale, rule.mode, module)
        else:
            std = rule.weight_std(tuple(shape))
    except Exception:  # rules whose formula does not fit this shape promise nothing
        return None
    return None if std is None else float(std)


def _sampleable(kind: str, rule: Any, role: str, shape: tuple[int, ...],
                module: nn.Module | None) -> bool:
    """Whether a sample measures this tensor faithfully: nothing is promised of it, or its
    rule fills it elementwise (see :mod:`.measuring`)."""
    if kind != "rule":
        return True
    if not isinstance(rule, BaseInit):
        return False
    try:
        return rule.elementwise("bias" if role == "bias" else "weight", shape, module) \
            is not None
    except Exception:  # a rule that cannot describe this tensor: measure it all
        return False


def build_report(model: nn.Module, record: InitRecord | None = None, *,
                 sample: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Report:
    """The report of the last initialization of ``model`` (its record + measured values).

    ``record`` defaults to ``weightinit.get_init_record(model)``. Every
    element is measured, unless ``sample`` is given: then a tensor of more
    elements is measured on that many random ones (not those of a structured
    fill; :mod:`.measuring`), and a note says so. ``progress(1)`` is called
    after each tensor is measured.

    Example::

        >>> record = weightinit.initialize(net, dict(type='Kaiming', layer='Linear'))
        >>> print(build_report(net, record).to_markdown())
    """

    if record is None:
        record = get_init_record(model)
    if record is None:
        raise InitValueError(f"{type(model).__name__} has no init record: initialize it first "
                             "(init_weights() or weightinit.initialize(model, init_cfg)).")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    names = [n for n in record.params if n in params]
    rows = []
    roles = []
    for name in names:
        r = record[name]
        p = params[name]
        owner = owner_module(modules, name)
        kind = r.kind
        rule_type, rule_args = rule_description(r.rule, r.kind, r.info)
        own = own_init(r.declared_in, owner) if kind == UNCHANGED else None
        if own is not None:
            kind, rule_type = MODEL_KIND, own
        role = _role(r.rule, owner, p) if kind == "rule" else "weight"
        roles.append(_sampleable(kind, r.rule, role, tuple(p.shape), owner))
        promised = (promised_std(r.rule, role, tuple(p.shape), owner) if kind == "rule"
                    else None)
        rows.append(ParamReport(
            name=name, shape=tuple(p.shape), dtype=str(p.dtype).replace("torch.", ""),
            device=str(p.device), kind=kind, rule_type=rule_type, rule_args=rule_args,
            info=r.info, declared_in=r.declared_in, promised_std=promised))
    stats = measure([params[n] for n in names], sample, roles, progress)
    rows = [replace(row, mean=mean, std=std, measured=n)
            for row, (mean, std, n) in zip(rows, stats)]
    # One line per checkpoint load (keys loaded, missing, unexpected, mismatched).
    notes = [f"checkpoint {load}" for load in getattr(record, "loads", ())]
    sampled = sum(1 for row in rows if row.measured is not None and row.measured < row.numel)
    if sampled:
        notes.append(f"mean and std of {sampled} tensor(s) over {sample:,} elements were "
                     f"measured on {sample:,} randomly chosen elements each (the std check "
                     "allows for the sample's error); the others on every element.")
    return Report(record.root, rows, "init record", notes)


def plan_report(plan: Plan, model: nn.Module | None = None) -> Report:
    """The report of a plan (:func:`weightinit.plan`): owners and promises, nothing measured.

    ``model`` (the planned model) supplies each parameter's device.
    """
    devices = {n: str(p.device) for n, p in model.named_parameters()} if model is not None else {}
    modules = dict(model.named_modules()) if model is not None else {}
    rows = []
    for e in plan:
        owner = e.owner
        promised = None
        if owner is None or owner.kind is OpKind.DEFAULT:
            kind, rule, info = UNCHANGED, None, e.owner_info
        elif isinstance(owner, UserCall):
            kind = owner.record_kind.value
            rule = owner.rule if owner.rule is not None else owner.init
            info = e.owner_info
        else:
            kind, rule, info = owner.kind.value, owner.rule, owner.info
            if isinstance(owner, RuleFill):
                promised = promised_std(rule, owner.role.value, tuple(e.shape), owner.module)
        rule_type, rule_args = rule_description(rule, kind, info)
        own = own_init(e.declared_in, owner_module(modules, e.name)) if kind == UNCHANGED \
            else None
        if own is not None:
            kind, rule_type = MODEL_KIND, own
        rows.append(ParamReport(
            name=e.name, shape=tuple(e.shape), dtype=e.dtype, device=devices.get(e.name, "meta"),
            kind=kind, rule_type=rule_type, rule_args=rule_args, info=info,
            declared_in=e.declared_in, promised_std=promised))
    defaults = plan.default_writes
    eager = plan.naive_writes
    how = (f"{defaults} at construction + {eager - defaults} by init_cfg" if defaults
           else "by init_cfg")
    notes = [f"{plan.planned_writes} tensor writes planned; an eager run makes {eager} ({how})."]
    # One line per checkpoint load, as in the init report: a pending download says so.
    notes += [f"checkpoint {load}" for load in plan.loads]
    return Report(plan.root, rows, "plan", notes, list(plan.undefined))
