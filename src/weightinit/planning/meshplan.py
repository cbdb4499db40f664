"""Plan a sharded initialization for every rank of a mesh, on one machine, without processes.

A model (on ``meta``, or real) is laid out as FSDP2, tensor parallelism or
both would lay it out on a mesh of any size — placements worked out directly
(:func:`layout_splits`), no process group, no memory — and each rank's part
of each tensor is computed by the same integer arithmetic the real run uses
(:func:`~.regions.compute_region`), as is what it draws (the seeded tiles
its boxes overlap, :func:`~weightinit.execution.tiles.drawn_elements`).
Ranks whose figures are identical form one class: the work grows with the
number of distinct (shape, placements) pairs and rank classes, not with
ranks × tensors.

Layouts (mesh dimensions in this order):

* ``fsdp`` — one dimension: every tensor ``Shard(0)`` (FSDP2's ``fully_shard``);
* ``hsdp`` — (replicate, shard): ``(Replicate(), Shard(0))``;
* ``tp`` — one dimension: the tensor-parallel plan (below), other tensors replicated;
* ``fsdp_tp`` — (dp, tp): the tensor-parallel plan on ``tp``, then FSDP2 on ``dp``
  (``_StridedShard(0, sf=tp)`` over a column-parallel weight, as torch lays it out).

The tensor-parallel plan maps module names (``fnmatch`` patterns over full
module paths) to ``"colwise"`` or ``"rowwise"`` as ``ColwiseParallel`` /
``RowwiseParallel`` would shard them: a column-parallel ``Linear`` splits its
weight's rows and its bias, a row-parallel one its weight's columns; an
``Embedding`` row-parallel splits its vocabulary rows, column-parallel its
columns. Without a plan, a Llama's: q/k/v, gate/up and the output head by
columns, the output and down projections by rows, the token embedding by rows.
The plan a model is given to ``parallelize_module`` (``{"layers.*.wq":
ColwiseParallel(), ...}``) is accepted as it is and matched as that function
matches it.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..errors import CheckpointError, InitValueError
from .ops import CheckpointRead, UserCall, whole_on_every_rank
from .regions import compute_region, strided_conflict
from .tiling import drawn_elements, scratch_elements

LAYOUTS = ("fsdp", "hsdp", "tp", "fsdp_tp")
_DIMS = {"fsdp": 1, "hsdp": 2, "tp": 1, "fsdp_tp": 2}

#: a Llama's tensor-parallel plan (torchtitan's and Hugging Face's module names)
LLAMA_TP_PLAN = {
    "*.q_proj": "colwise", "*.k_proj": "colwise", "*.v_proj": "colwise",
    "*.wq": "colwise", "*.wk": "colwise", "*.wv": "colwise",
    "*.gate_proj": "colwise", "*.up_proj": "colwise", "*.w1": "colwise", "*.w3": "colwise",
    "*.o_proj": "rowwise", "*.wo": "rowwise", "*.down_proj": "rowwise", "*.w2": "rowwise",
    "embed": "rowwise", "*.embed_tokens": "rowwise", "tok_embeddings": "rowwise",
    "lm_head": "colwise", "output": "colwise",
}


def parse_mesh(mesh: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``{"dp": 128, "tp": 8}`` or ``"dp=128,tp=8"`` -> (names, sizes), checked."""
    items = mesh.items() if isinstance(mesh, dict) else None
    if isinstance(mesh, str):
        try:
            items = [(k.strip(), int(v)) for k, v in (part.split("=") for part in mesh.split(","))]
        except ValueError:
            items = None
    if not items:
        raise InitValueError(f"mesh must name each dimension and its size, e.g. "
                             f"'dp=128,tp=8' or {{'dp': 128, 'tp': 8}}; got {mesh!r}")
    names, sizes = [], []
    for name, size in items:
        if not isinstance(name, str) or not name or isinstance(size, bool) \
                or not isinstance(size, int) or size < 1:
            raise InitValueError(f"mesh dimension {name!r}: size must be a positive int, got "
                                 f"{size!r}. Fix: e.g. 'dp=128,tp=8'")
        names.append(name)
        sizes.append(size)
    return tuple(names), tuple(sizes)


def _tp_split(module: nn.Module, attr: str, style: str, ndim: int) -> tuple:
    """The tensor-parallel split of one tensor of a module the plan names."""
    if ndim == 0:
        return ("replicate",)
    if isinstance(module, nn.Embedding):
        return ("shard", 0) if style == "rowwise" else ("shard", 1)
    if attr == "bias":
        return ("shard", 0) if style == "colwise" else ("replicate",)
    return ("shard", 0) if style == "colwise" else ("shard", min(1, ndim - 1))


def _style(pattern: str, value: Any) -> tuple[str | None, bool]:
    """(``"colwise"``/``"rowwise"``/``None``, whether it is a ``parallelize_module`` style) of
    one tensor-parallel plan entry. A style object is read by its class (subclasses too, such
    as float8's): ``ColwiseParallel``/``RowwiseParallel`` shard parameters; the other styles
    (``SequenceParallel``, ``PrepareModuleInput`` ...) move activations and keep them whole."""
    if value in ("colwise", "rowwise"):
        return value, False
    bases = {c.__name__ for c in type(value).__mro__}
    if "ColwiseParallel" in bases:
        return "colwise", True
    if "RowwiseParallel" in bases:
        return "rowwise", True
    if "ParallelStyle" in bases:
        return None, True
    raise InitValueError(f"tp_plan[{pattern!r}]: {value!r} is not 'colwise', 'rowwise' or a "
                         "parallelize_module style (ColwiseParallel(), RowwiseParallel(), ...)")


def _atoms_match(name: str, pattern: str) -> bool:
    """``parallelize_module``'s matching: each dot-separated part against its pattern part."""
    parts, atoms = name.split("."), pattern.split(".")
    return len(parts) == len(atoms) and all(map(fnmatch.fnmatchcase, parts, atoms))


def layout_splits(model: nn.Module, layout: str, sizes: tuple[int, ...],
                  tp_plan: dict[str, Any] | None = None) -> dict[str, tuple]:
    """Each parameter's placements on the mesh, as :mod:`.regions` reads them. ``tp_plan``:
    module pattern -> ``"colwise"``/``"rowwise"`` (``fnmatch`` over full paths), or the plan
    given to ``parallelize_module`` (its style objects, matched part by part as it does)."""
    if layout not in LAYOUTS:
        raise InitValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if len(sizes) != _DIMS[layout]:
        raise InitValueError(f"layout {layout!r} needs a mesh of {_DIMS[layout]} dimension(s), "
                             f"got {len(sizes)}. Fix: e.g. "
                             + ("'dp=8,tp=4'" if _DIMS[layout] == 2 else "'dp=8'"))
    styles: dict[str, str] = {}
    if layout in ("tp", "fsdp_tp"):
        plan = LLAMA_TP_PLAN if tp_plan is None else tp_plan
        if not isinstance(plan, dict):
            raise InitValueError(f"tp_plan must be a dict of module pattern -> 'colwise', "
                                 f"'rowwise' or a parallelize_module style, got "
                                 f"{type(plan).__name__}")
        modules = dict(model.named_modules())
        names = [n for n in modules if n]
        for pattern, value in plan.items():
            style, real = _style(pattern, value)
            hits = ([n for n in names if _atoms_match(n, pattern)] if real
                    else fnmatch.filter(names, pattern))
            if not hits and tp_plan is not None:
                raise InitValueError(f"tp_plan[{pattern!r}] names no module of "
                                     f"{type(model).__name__}. Fix: use full module paths "
                                     f"or patterns, e.g. {names[:3]}")
            for hit in hits if style else ():
                if real and not isinstance(modules[hit], (nn.Linear, nn.Embedding)):
                    raise InitValueError(
                        f"tp_plan[{pattern!r}]: {type(value).__name__} shards nn.Linear and "
                        f"nn.Embedding only, and {hit!r} is a {type(modules[hit]).__name__}. "
                        "Fix: name its Linear/Embedding children instead")
                styles[hit] = style
    out: dict[str, tuple] = {}
    for mod_name, module in model.named_modules():
        for attr, t in module.named_parameters(recurse=False):
            name = f"{mod_name}.{attr}" if mod_name else attr
            ndim = t.dim()
            tp = (_tp_split(module, attr, styles[mod_name], ndim) if mod_name in styles
                  else ("replicate",))
            dp = ("shard", 0) if ndim else ("replicate",)
            if layout == "fsdp":
                out[name] = (dp,)
            elif layout == "hsdp":
                out[name] = (("replicate",), dp)
            elif layout == "tp":
                out[name] = (tp,)
            elif tp[0] == "shard" and tp[1] == 0:
                out[name] = (("strided", 0, sizes[1]), tp)
            else:
                out[name] = (dp, tp)
    return out


@dataclass
class RankClass:
    """Ranks whose work is identical, and that work."""

    ranks: list[int]
    local_elements: int
    local_bytes: dict[str, int]
    drawn_elements: int
    #: largest temporary a rank holds at once (bytes): a tensor drawn whole, a checkpoint
    #: slice read before it is copied into place, or its fill threads' tile buffers
    temp_bytes: int
    #: checkpoint bytes a rank reads (its part of each entry), and the files it opens
    read_bytes: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return sum(self.local_bytes.values()) + self.temp_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"ranks": _ranges(self.ranks), "count": len(self.ranks),
                "local_elements": self.local_elements, "local_bytes": self.local_bytes,
                "drawn_elements": self.drawn_elements, "temp_bytes": self.temp_bytes,
                "peak_bytes": self.peak_bytes,
                "checkpoint_bytes_read": self.read_bytes, "files": self.files}


@dataclass
class MeshPlan:
    """What every rank of a simulated mesh does: rank classes and refused tensors."""

    mesh: dict[str, int]
    layout: str
    classes: list[RankClass]
    #: (tensor name, why) for tensors this layout cannot initialize
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def world(self) -> int:
        return math.prod(self.mesh.values())

    def to_dict(self) -> dict[str, Any]:
        return {"mesh": self.mesh, "layout": self.layout, "world": self.world,
                "classes": [c.to_dict() for c in self.classes],
                "refused": [{"name": n, "why": w} for n, w in self.refused]}


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            parts.append(f"{start}-{r}" if r != start else f"{r}")
            start = None
    return ",".join(parts)


def rank_draws(owner: Any, shape: tuple[int, ...]) -> str:
    """How a rank writes a tensor whose last planned writer is ``owner`` (see
    :func:`plan_mesh`): user code is counted as drawing its tensors from the tiles."""
    if owner is None or isinstance(owner, CheckpointRead):
        return "none"
    if isinstance(owner, UserCall):
        return "tiles"
    if whole_on_every_rank(owner, shape):
        return "whole"
    dist = owner.elementwise(shape)
    return "tiles" if dist is not None and dist.random else "none"


def checkpoint_reads(plan: Any) -> dict[str, tuple[str, int]]:
    """Tensor -> (file, bytes per element) of the checkpoint entry the init plan reads into it."""
    out = {}
    for entry in plan:
        op = entry.owner
        if isinstance(op, CheckpointRead) and op.key in op.state:
            try:
                size = op.state.dtype(op.key).itemsize
            except CheckpointError:  # (a dtype the run refuses: planning said so already)
                continue
            out[entry.name] = (op.state.file_of(op.key), size)
    return out


def plan_mesh(model: nn.Module, mesh: Any, layout: str, tp_plan: dict[str, Any] | None = None,
              draws: dict[str, str] | None = None, dtype: Any = None,
              reads: dict[str, tuple[str, int]] | None = None, threads: int = 1) -> MeshPlan:
    """Every rank's part of ``model`` on ``mesh`` laid out by ``layout``. ``draws`` says how
    each tensor is written, from the init plan: ``"tiles"`` (a random elementwise fill, the
    default), ``"whole"`` (drawn whole on every rank: orthogonal ...) or ``"none"`` (a
    constant, a checkpoint read, kept as constructed: nothing drawn). ``dtype``: the run's
    (default: each tensor's own). ``reads``: tensor -> (file, bytes per element) of the
    checkpoint entries read into it (a rank reads only its part). ``threads``: fill threads
    per rank (each holds a tile buffer where a shard cuts tiles)."""
    names, sizes = parse_mesh(mesh)
    splits = layout_splits(model, layout, sizes, tp_plan)
    draws, reads = draws or {}, reads or {}
    tensors = dict(model.named_parameters())
    # one figure table per distinct (shape, dtype, placements, drawn whole)
    kinds: dict[tuple, int] = {}
    refused: list[tuple[str, str]] = []
    for name, t in tensors.items():
        shape = tuple(t.shape)
        for split in splits[name]:
            if split[0] == "strided" and strided_conflict(shape[split[1]], sizes,
                                                          splits[name], split[1]):
                refused.append((name, f"{shape} over mesh {dict(zip(names, sizes))}: "
                                "FSDP2 and DTensor read its rows two ways. Fix: make that "
                                "dimension divisible by the mesh size"))
                break
        else:
            kind = dtype if dtype is not None and t.is_floating_point() else t.dtype
            key = (shape, str(kind).replace("torch.", ""), kind.itemsize, splits[name],
                   draws.get(name, "tiles"), reads.get(name))
            kinds[key] = kinds.get(key, 0) + 1
    per_rank: dict[tuple, list[int]] = {}
    coords = list(itertools.product(*(range(n) for n in sizes)))
    tables = {key: _figures(key, sizes, coords, threads) for key in kinds}
    for rank, _ in enumerate(coords):
        local = drawn = biggest = read = 0
        by_dtype: dict[str, int] = {}
        files: set[str] = set()
        for key, count in kinds.items():
            n, d, temp = tables[key][rank]
            local += count * n
            drawn += count * d
            by_dtype[key[1]] = by_dtype.get(key[1], 0) + count * n * key[2]
            biggest = max(biggest, temp)
            if key[5] is not None and n:
                read += count * n * key[5][1]
                files.add(key[5][0])
        figures = (local, drawn, biggest, tuple(sorted(by_dtype.items())), read,
                   tuple(sorted(files)))
        per_rank.setdefault(figures, []).append(rank)
    classes = [RankClass(ranks, f[0], dict(f[3]), f[1], f[2], f[4], list(f[5]))
               for f, ranks in per_rank.items()]
    classes.sort(key=lambda c: c.ranks[0])
    return MeshPlan(dict(zip(names, sizes)), layout, classes, refused)


def _figures(key: tuple, sizes: tuple[int, ...], coords: list[tuple[int, ...]], threads: int
             ) -> list[tuple[int, int, int]]:
    """(local elements, elements drawn, temporary bytes) of one kind of tensor on each rank,
    computed once per distinct coordinate along the dimensions that split it."""
    shape, _, itemsize, splits, how, read = key
    used = [i for i, s in enumerate(splits) if s[0] != "replicate"]
    cache: dict[tuple[int, ...], tuple[int, int, int]] = {}
    out = []
    total = math.prod(shape)
    for coord in coords:
        mine = tuple(coord[i] for i in used)
        hit = cache.get(mine)
        if hit is None:
            region = compute_region(shape, sizes, coord, splits)
            if read is not None:  # each box read whole, then copied into place
                hit = (region.numel, 0, max((math.prod(b.shape) * read[1]
                                             for b in region.boxes), default=0))
            elif how == "none":
                hit = (region.numel, 0, 0)
            elif how == "whole":
                hit = (region.numel, total if region.numel else 0,
                       total * itemsize if region.numel else 0)
            else:
                scratch = max((scratch_elements(shape, b.offset, b.shape)
                               for b in region.boxes), default=0)
                hit = (region.numel, sum(drawn_elements(shape, b.offset, b.shape)
                                         for b in region.boxes), threads * scratch * itemsize)
            cache[mine] = hit
        out.append(hit)
    return out


__all__ = ["LAYOUTS", "LLAMA_TP_PLAN", "MeshPlan", "RankClass", "layout_splits", "parse_mesh",
           "checkpoint_reads", "plan_mesh", "rank_draws"]
