"""Planning: module tree + rules (or a checkpoint) -> an immutable plan, nothing written.

One planner (:func:`build_plan`) serves ``plan()``, ``init_weights()``,
``initialize()`` and ``load_checkpoint()``. A plan lists, for every tensor,
its ordered writers — typed ops with an :class:`OpKind` — in MMEngine's
priority order, with every input already validated.
"""

from .build import Request, build_plan, check_target
from .checkpoints import state_tensors
from .defaults import needs_materialization, slots_of
from .layout import has_sharded, is_sharded, local_region
from .nodes import (
    PLANNED,
    InitCfgNode,
    is_node,
    is_planned,
    planned,
    post_order,
    register_node_type,
    unregister_node_type,
)
from .ops import (
    CheckpointRead,
    DefaultFill,
    Op,
    OpKind,
    Role,
    RuleFill,
    UserCall,
    Writer,
    class_name,
    fills_whole,
)
from .plan import Plan, PlanEntry, Step, Write, schedule, subtree_tensors
from .recorded import construction_elementwise
from .tree import PlanningCache

__all__ = [
    "PLANNED", "CheckpointRead", "DefaultFill", "InitCfgNode", "Op", "OpKind", "Plan", "PlanEntry",
    "PlanningCache", "Request", "Role", "RuleFill", "Step", "UserCall", "Write", "Writer",
    "build_plan", "check_target", "class_name", "construction_elementwise", "fills_whole",
    "has_sharded",
    "is_node", "is_planned", "is_sharded", "local_region", "needs_materialization", "planned",
    "post_order", "register_node_type", "schedule", "slots_of", "state_tensors", "subtree_tensors",
    "unregister_node_type",
]
