"""What the load test sends and how it reads the answers: plain functions, no Locust.

Kept apart from the locustfile because importing locust monkey-patches the whole process (gevent),
which the test process and the benchmark must not suffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROMPTS = [
    "Say hello.",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is two plus two?",
]
NAMED_FAILURES = {
    401: "401 unauthorised",
    403: "403 forbidden",
    429: "429 rate limited",
    503: "503 unavailable",
}


@dataclass(frozen=True, slots=True)
class Credential:
    key: str = ""
    label: str = ""  # empty: rows carry no suffix


def parse_keys(labelled: str, plain: str) -> list[Credential]:
    """The credentials users take in turn, a labelled key repeated by its weight."""
    if labelled.strip():
        out = []
        for item in (i.strip() for i in labelled.split(",")):
            if not item:
                continue
            label, sep, key = item.partition("=")
            label, _, weight = label.partition("*")
            if not sep or not label.strip() or not key.strip():
                # The item itself is not repeated: it may be a bare key.
                raise ValueError("LLM_POD_API_KEYS: every item must read LABEL[*WEIGHT]=KEY")
            if weight and not (weight.isdigit() and int(weight) > 0):
                raise ValueError(f"LLM_POD_API_KEYS: the weight of {label!r} must be a positive integer")
            out += [Credential(key.strip(), label.strip())] * int(weight or 1)
        return out
    return [Credential(k.strip()) for k in plain.split(",") if k.strip()] or [Credential()]


def streams(n: int, share: float) -> bool:
    """Whether a user's n-th call (from 0) streams: `share` of them, spread evenly, the first one streamed."""
    return math.ceil((n + 1) * share) > math.ceil(n * share)


def sse_data(line: bytes) -> bytes | None:
    """The payload of one `data:` line of a server-sent-events stream, None for anything else."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip()
