"""The end of each request, as nginx reports it, and what is in flight in this pod.

`auth_request` tells the sidecar when a request starts but not when it ends. nginx writes one extra
access-log line per authorised request to a syslog target on 127.0.0.1 (UDP), holding only the
request id and the key id; this listener turns each line into a release of the request's
concurrency lease and in-flight slot.

Failure modes. A lost datagram (the sidecar restarting, or its socket buffer overflowing under a
flood) leaves a lease held until it expires after `LLM_POD_LEASE_SECONDS`: until then the key has
one slot fewer and the pod counts one request too many in flight (an error on the refusing side
that heals on its own). A request that runs longer than `LLM_POD_LEASE_SECONDS` loses its lease
while still streaming: from then on it counts neither against its key's concurrency nor in the
in-flight load, so both undercount and admit too much (an error on the admitting side). Set the
lease to at least the longest request served (see docs/auth.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# `<190>Nov 22 17:00:00 llm_pod: <request id> <key id> <upstream status>` (nginx's syslog line,
# `nohostname`); the status is `-` when nginx answered itself, or a list after a retry ("502, 200").
LINE = re.compile(rb"llm_pod: ([0-9a-fA-F-]{16,36}) (\S+)(?: (.*?))?\s*$")


class InFlight:
    """Requests let through by this replica and not reported finished, each with an expiry."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._expiry: dict[str, float] = {}

    def start(self, request_id: str) -> None:
        self._expiry[request_id] = time.monotonic() + self.lease_seconds

    def end(self, request_id: str) -> None:
        self._expiry.pop(request_id, None)

    def count(self) -> int:
        now = time.monotonic()
        for rid in [r for r, t in self._expiry.items() if t <= now]:
            del self._expiry[rid]
        return len(self._expiry)


# (key id, request id, whether the engine answered it with a 2xx)
Release = Callable[[str, str, bool], Awaitable[None]]


def engine_answered(upstream_status: str) -> bool:
    """Whether nginx's $upstream_status says the engine's last answer to the request was a 2xx."""
    last = upstream_status.rsplit(",", 1)[-1].strip()
    return len(last) == 3 and last.startswith("2") and last.isdigit()


class RequestEndProtocol(asyncio.DatagramProtocol):
    def __init__(self, release: Release) -> None:
        self.release = release
        self._tasks: set[asyncio.Task[None]] = set()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        match = LINE.search(data)
        if match is None:
            logger.warning("ignoring a request-end line that does not parse (%d bytes)", len(data))
            return
        request_id, key_id = match.group(1).decode(), match.group(2).decode(errors="replace")
        statuses = (match.group(3) or b"").decode(errors="replace")
        task = asyncio.ensure_future(self.release(key_id, request_id, engine_answered(statuses)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def listen(host: str, port: int, release: Release) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: RequestEndProtocol(release), local_addr=(host, port)
    )
    return transport
