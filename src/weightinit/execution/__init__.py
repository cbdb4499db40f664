"""Execution: materialize, write each tensor once by the run's strategy, watch user code,
commit or roll back."""

from .entries import Entry
from .seeding import current_seed, derive_seed, fill_elementwise, run_seeded, seeded
from .session import Session
from .strategies import Plain, Seeded, Sharded, choose
from .tiles import TILE
from .transaction import Transaction

__all__ = [
    "Entry", "Plain", "Seeded", "Session", "Sharded", "Transaction", "choose",
    "TILE", "current_seed", "derive_seed", "fill_elementwise", "run_seeded", "seeded",
]
