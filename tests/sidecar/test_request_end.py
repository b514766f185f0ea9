"""nginx's end-of-request line, parsed: the request and key it releases, and whether the engine
answered it (a 2xx from the upstream)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.request_end import RequestEndProtocol, engine_answered


@pytest.mark.parametrize(
    ("status", "answered"),
    [("200", True), ("206", True), ("502, 200", True), ("200, 502", False), ("-", False), ("", False),
     ("504", False), ("2000", False)],
)  # fmt: skip
def test_engine_answered_reads_the_last_upstream_status(status: str, answered: bool) -> None:
    assert engine_answered(status) is answered


async def test_each_line_releases_its_request_with_the_engines_verdict() -> None:
    released: list[tuple[str, str, bool]] = []

    async def release(key_id: str, request_id: str, answered: bool) -> None:
        released.append((key_id, request_id, answered))

    protocol = RequestEndProtocol(release)
    rid = "0123456789abcdef0123456789abcdef"
    for line in (
        f"<190>Nov 23 12:00:00 llm_pod: {rid} alice 200",
        f"<190>Nov 23 12:00:00 llm_pod: {rid} bob -",
        f"<190>Nov 23 12:00:00 llm_pod: {rid} carol",  # an older template's line: no status
        "<190>Nov 23 12:00:00 llm_pod: not-a-request-id x 200",  # ignored
    ):
        protocol.datagram_received(line.encode(), ("127.0.0.1", 1))
    await asyncio.gather(*protocol._tasks)  # the releases run as tasks
    assert released == [("alice", rid, True), ("bob", rid, False), ("carol", rid, False)]
