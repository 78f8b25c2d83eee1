"""What of the registry's state a server does not serve, as the one error its readiness
reports (``Runtime.registry_apply_error``): canaries whose candidate it cannot serve, and
views whose data pointer is malformed (each kept at the data version it had)."""

from __future__ import annotations

from collections.abc import Mapping

from featurestore.errors import FailedPrecondition


class CanaryNotServed(FailedPrecondition):
    """Canaries this server serves from current: their candidate cannot be served here."""

    def __init__(self, unserved: Mapping[str, str]) -> None:
        super().__init__(
            "canary not served (its requests use current): "
            + "; ".join(f"feature service {k!r} {why}" for k, why in sorted(unserved.items()))
        )


class DataVersionNotRead(FailedPrecondition):
    """Views whose data pointer is malformed, each served at the data version it had
    (and the canaries not served, ``canaries``, if any: one error reports both)."""

    def __init__(
        self, malformed: Mapping[str, str], served: Mapping[str, int], canaries: Mapping[str, str]
    ) -> None:
        parts = [
            f"view {view!r} stays at data version {served[view]}: {why}"
            if view in served
            else f"view {view!r} has no data version: {why}"
            for view, why in sorted(malformed.items())
        ]
        super().__init__("; ".join(parts + ([str(CanaryNotServed(canaries))] if canaries else [])))


def not_served(
    canaries: Mapping[str, str], malformed: Mapping[str, str], served: Mapping[str, int]
) -> FailedPrecondition | None:
    """What of the registry's state is not served: canaries left out (``canaries``, by
    service) and views whose data pointer is ``malformed``; None when everything is."""
    if malformed:
        return DataVersionNotRead(malformed, served, canaries)
    return CanaryNotServed(canaries) if canaries else None
