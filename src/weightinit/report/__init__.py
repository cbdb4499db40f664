"""The init report: per parameter, what owns it, where that was declared, and what it holds.

A :class:`Report` is plain data built from an init record and the live model
(:func:`build_report`) or from a plan (:func:`plan_report`, nothing
measured). Per parameter it holds the full name, shape, dtype and device; the
rule that owns it (type and arguments) and where that rule was declared
(``'backbone (ResNet) init_cfg[0]'``, ``'... init_cfg.override'``,
``'checkpoint X key Y (...)'``, ``'user-defined init_weights in Class'`` or
``'PyTorch default (...)'``); the measured mean and std beside the std the
rule promises (:meth:`BaseInit.weight_std`; a rule's bias is a constant, so
it promises 0). A coverage summary counts parameters and elements per rule
and lists the parameters left at the PyTorch default.

Views: :meth:`Report.to_json`, :meth:`Report.to_markdown`,
:meth:`Report.rich_table` and :meth:`Report.rich_coverage`.

Example::

    >>> model.init_weights()
    >>> rep = build_report(model)
    >>> rep["head.fc.weight"].promised_std
    0.01
    >>> open("report.md", "w").write(rep.to_markdown())
"""

from .building import build_report, plan_report, promised_std, rule_description
from .entries import DEFAULT_LABEL, STD_TOLERANCE_SIGMAS, CoverageRow, ParamReport
from .measuring import SUMMARY_SAMPLE
from .model import Report
from .owners import MODEL_KIND, MODEL_LABEL

__all__ = ["DEFAULT_LABEL", "MODEL_KIND", "MODEL_LABEL", "STD_TOLERANCE_SIGMAS", "SUMMARY_SAMPLE",
           "CoverageRow", "ParamReport", "Report", "build_report", "plan_report",
           "promised_std", "rule_description"]
