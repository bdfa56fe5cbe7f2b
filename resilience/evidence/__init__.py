"""The evidence ledger: every action is a recorded, signed run of steps."""

from .ledger import Ledger, VerifyResult
from .run import Run, Step

__all__ = ["Ledger", "Run", "Step", "VerifyResult"]
