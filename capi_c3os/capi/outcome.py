"""What a reconcile (or one of its steps) says should happen next.

Three answers matter to a CAPI controller (see STYLE.md, "Errors"):

- done: this step is complete (or there is nothing to do); go on / stop until the
  world changes.
- wait: not yet — try again after `after` seconds; `reason`/`message` say what we wait
  for and become a condition a person can read.
- error: this will not heal by waiting (bad spec, missing credentials); surface it and
  stop hammering until the object changes.

Unexpected exceptions are none of these: they are bugs, and the operator layer logs
them with the object key and backs off.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from capi_c3os.capi.conditions import is_camel_case


class Kind(enum.Enum):
    DONE = "done"
    WAIT = "wait"
    ERROR = "error"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str = ""
    message: str = ""
    after: float | None = None

    def __post_init__(self) -> None:
        if self.reason and not is_camel_case(self.reason):
            raise ValueError(f"outcome reason must be CamelCase, got {self.reason!r}")
        if self.kind is not Kind.DONE and not self.reason:
            raise ValueError(f"a {self.kind.value} outcome needs a reason")
        if self.kind is Kind.WAIT and (self.after is None or self.after < 0):
            raise ValueError("a wait outcome needs after >= 0 seconds")
        if self.kind is not Kind.WAIT and self.after is not None:
            raise ValueError("only a wait outcome has an `after`")

    @classmethod
    def ready(cls, reason: str = "", message: str = "") -> Outcome:
        return cls(Kind.DONE, reason, message)

    @classmethod
    def paused(cls, message: str = "reconciliation is paused") -> Outcome:
        """Nothing is done while paused; the next change (unpause) wakes us again."""
        return cls(Kind.DONE, "Paused", message)

    @classmethod
    def wait(cls, reason: str, message: str, after: float) -> Outcome:
        return cls(Kind.WAIT, reason, message, after)

    @classmethod
    def error(cls, reason: str, message: str) -> Outcome:
        return cls(Kind.ERROR, reason, message)

    @property
    def done(self) -> bool:
        return self.kind is Kind.DONE

    @property
    def waiting(self) -> bool:
        return self.kind is Kind.WAIT

    @property
    def failed(self) -> bool:
        return self.kind is Kind.ERROR
