"""Whose code gave a parameter nothing initialized its value: PyTorch's, or the model's own.

The record says ``unchanged`` for every parameter no rule, checkpoint or
``init_weights`` wrote. Its value still came from somewhere, and the report
names it:

* a Hugging Face model's ``_init_weights`` (the record declares it
  ``model default (_init_weights of LlamaPreTrainedModel...)``):
  ``LlamaPreTrainedModel._init_weights``;
* the model's own code that overwrote a constructor's write, built deferred (the
  record says ``model default: normal_(std=0.02) in MyNet.post_init``): ``MyNet.post_init``;
* a ``reset_parameters`` the model defines (its class, or a base class
  outside ``torch``): ``MyLayer.reset_parameters``;
* a parameter of a module class outside ``torch`` that defines no
  ``reset_parameters``, built deferred (the record names the constructor's
  writes, ``PyTorch default (constructor: trunc_normal_)``): its constructor
  set it, ``MyNet.__init__``. Built eagerly, what the constructor did is not
  known (``torch.empty`` leaves garbage), so it stays a warned default;
* otherwise a ``torch.nn`` module's own ``reset_parameters``: the PyTorch
  default, which the report warns about.

The first four are the model's own init (report kind ``model``), which is
deliberate and not warned about.
"""

from __future__ import annotations

import re

import torch.nn as nn

#: the record kind of a parameter nothing wrote, and the report kind of a model's own init
UNCHANGED = "unchanged"
MODEL_KIND = "model"
MODEL_LABEL = "model's own init"
# How the record declares these defaults (weightinit.planning.ops.DefaultFill.declared_in,
# weightinit.execution.session.Session.record).
_MODEL_DEFAULT = re.compile(r"model default \(_init_weights of ([\w.]+)")
#: a deferred model's own code overwrote the constructor's write: ``model default: op in X.f``
_OVERWRITTEN = re.compile(r"model default: .* in ([\w.<>]+)$")
_CONSTRUCTED = "PyTorch default (constructor: "


def own_init(declared_in: str, module: nn.Module | None) -> str | None:
    """``Class.method`` of the model's own code that set an unchanged parameter of ``module``
    (its owner), or None when it holds PyTorch's default (see the module docstring)."""
    found = _MODEL_DEFAULT.match(declared_in)
    if found is not None:
        return f"{found.group(1)}._init_weights"
    found = _OVERWRITTEN.match(declared_in)
    if found is not None:
        return found.group(1)
    if module is None:
        return None
    cls = type(module)
    if _in_torch(cls):
        return None
    definer = next((c for c in cls.__mro__ if "reset_parameters" in vars(c)), None)
    if definer is not None:
        return None if _in_torch(definer) else f"{definer.__name__}.reset_parameters"
    return f"{cls.__name__}.__init__" if declared_in.startswith(_CONSTRUCTED) else None


def owner_module(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    """The module that holds parameter ``name`` directly."""
    return modules.get(name.rpartition(".")[0])


def _in_torch(cls: type) -> bool:
    return cls.__module__ == "torch" or cls.__module__.startswith("torch.")


__all__ = ["MODEL_KIND", "MODEL_LABEL", "UNCHANGED", "own_init", "owner_module"]
