"""Readiness as ``/readyz`` reports it. (The gRPC health service says SERVING from the
moment both listeners accept until the drain starts; it does not look at store health.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


ReadinessProbe = Callable[[], Readiness]
