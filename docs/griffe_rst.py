"""Griffe extension: render weightinit's reST-flavoured docstrings as Markdown.

The docstrings use Google-style sections (``Args:``, ``Returns:``) with two reST habits that
Markdown does not know; before mkdocstrings parses a docstring this extension rewrites

* roles (``:class:`Plan```, ``:func:`~weightinit.seeded```) into cross-references, resolved
  in the scope of the documented object. They are *optional* references: a target outside
  the reference (``torch.nn.Module``) is shown as code, without a link and without a warning;
* literal-block markers (``Example::``, ``... one method::``) into a single colon, so that
  ``Example:`` opens an examples section and the indented block after a paragraph stays a
  Markdown code block.

Loaded by ``mkdocs.yml`` (``extensions: [docs/griffe_rst.py]``); nothing here is imported by
weightinit itself.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|exc|data|obj|const):`(~?)([^`]+)`")
_LITERAL_ALONE = re.compile(r"^[ \t]*::[ \t]*$", re.M)  # a "::" line: dropped
_LITERAL_SPACED = re.compile(r"[ \t]+::[ \t]*$", re.M)  # "text ::": the marker dropped
_LITERAL_GLUED = re.compile(r"(\S)::[ \t]*$", re.M)  # "text::": one colon kept


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``, or ``target`` itself if unknown."""
    head, dot, rest = target.partition(".")
    try:
        return obj.resolve(head) + dot + rest
    except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
        return target


def _convert(obj: griffe.Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        short, target = match[1] == "~", match[2].strip()
        bare = target.removesuffix("()")
        title = bare.rpartition(".")[2] if short else bare
        if target.endswith("()") or (short and match[0].startswith((":func:", ":meth:"))):
            title += "()" if not title.endswith("()") else ""
        identifier = html.escape(_resolve(obj, bare), quote=True)
        return (f'<autoref identifier="{identifier}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    text = _ROLE.sub(role, text)
    text = _LITERAL_ALONE.sub("", text)
    text = _LITERAL_SPACED.sub("", text)
    return _LITERAL_GLUED.sub(r"\1:", text)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
