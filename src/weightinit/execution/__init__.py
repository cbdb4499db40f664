"""Execution: materialize, write each tensor once by the run's strategy, watch user code,
commit or roll back."""

from .seeding import BLOCK, current_seed, derive_seed, fill_elementwise, run_seeded, seeded
from .session import Entry, Session
from .strategies import Plain, Seeded, Sharded, choose
from .transaction import Transaction

__all__ = [
    "BLOCK", "Entry", "Plain", "Seeded", "Session", "Sharded", "Transaction", "choose",
    "current_seed", "derive_seed", "fill_elementwise", "run_seeded", "seeded",
]
