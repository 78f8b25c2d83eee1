"""The measuring parts of benchmarks.store_faults and benchmarks.redis_protocol: what they
report must follow from what they saw."""

from __future__ import annotations

import argparse
import asyncio

from benchmarks.redis_protocol import LeanProtocol
from benchmarks.store_faults import DEADLINE_MS, by_phase, render, summary


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_the_lean_protocol_answers_each_join_its_own_replies_across_split_reads() -> None:
    async def scenario() -> tuple[list[object], list[object], list[bytes]]:
        proto = LeanProtocol()
        transport = _Transport()
        proto.connection_made(transport)
        first, second = proto.call(b"<a>", 2), proto.call(b"<b>", 2)
        await asyncio.sleep(0)  # the tick's write
        wire = b"*2\r\n$1\r\nx\r\n$-1\r\n$2\r\nok\r\n" + b"*1\r\n$1\r\ny\r\n" + b"-ERR denied\r\n"
        for i in range(0, len(wire), 5):  # the replies arrive in pieces
            proto.data_received(wire[i : i + 5])
        return await first, await second, transport.written

    first, second, written = asyncio.run(scenario())
    assert first == [[b"x", None], b"ok"]
    assert second[0] == [b"y"] and str(second[1]) == "ERR denied"
    assert written == [b"<a><b>"]  # one write for both joins of the tick


def _row(at: float, held_ms: float, status: str = "200", partial: bool = False) -> list[object]:
    """A join scheduled ``at`` s in, that waited 50 ms for a connection, then was held."""
    return [at, held_ms / 1000 + 0.05, held_ms / 1000, status, partial]


def test_a_join_held_past_the_deadline_and_ten_ms_is_counted_and_fails_the_verdict() -> None:
    ok = summary([_row(0.1, 1.0), _row(0.2, DEADLINE_MS + 9.0, partial=True)])
    late = summary([_row(0.1, 1.0), _row(0.2, DEADLINE_MS + 11.0, partial=True)])
    assert ok["over_deadline"] == 0 and late["over_deadline"] == 1
    assert late["counts"] == {"200": 1, "200 partial": 1}
    a = argparse.Namespace(workers=2, rate=400.0, batch=10, connections=256, before=3.0, fault=4.0, after=5.0)
    assert render({"paused": {"during": ok}}, a, "cmd")[-1].endswith("held past 510 ms: 0 (met).")
    assert render({"paused": {"during": late}}, a, "cmd")[-1].endswith("held past 510 ms: 1 (MISSED).")


def test_a_join_is_in_the_phase_it_was_scheduled_in_and_the_last_partial_one_after_is_reported() -> None:
    rows = [_row(2.999, 1.0), _row(3.0, 501.0, partial=True), _row(6.999, 2.0, partial=True),
            _row(7.0, 3.0, partial=True), _row(7.25, 1.0, "timeout"), _row(8.0, 1.0)]  # fmt: skip
    phases = by_phase(rows, before=3.0, fault=4.0, after=5.0)
    assert [phases[p]["joins"] for p in ("before", "during", "after")] == [1, 2, 3]
    assert phases["during"]["served_ms"][3] == 501.0  # from the write, not from the schedule (551)
    assert phases["during"]["scheduled_ms"][2] == 551.0
    assert phases["after"]["last_partial_s"] == 0.25  # the timeout counts as not answered in full
