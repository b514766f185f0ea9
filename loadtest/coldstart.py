"""The cold-start timer: time from the first request to the first completed answer.

    python -m loadtest.coldstart --url http://llm.example.org/gemma-3-270m --key sk-lp-... [--model NAME]

`--url` is the base in front of `/v1` (with a per-model prefix when routing by path, as through the
KEDA interceptor). A request held by the interceptor during a scale-from-zero simply takes long; a
503 (the cold-start placeholder, or a pod still loading) is retried after its Retry-After. Prints
one JSON object: seconds, attempts, and the status of each attempt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx


def measure(url: str, key: str, model: str, deadline_s: float, max_wait: float = 30.0) -> dict[str, object]:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    statuses: list[int | str] = []
    with httpx.Client(timeout=httpx.Timeout(deadline_s, connect=10)) as client:
        while time.monotonic() - started < deadline_s:
            try:
                resp = client.post(url.rstrip("/") + "/v1/chat/completions", json=body, headers=headers)
            except httpx.HTTPError as err:
                statuses.append(type(err).__name__)
                time.sleep(1)
                continue
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                return {
                    "seconds": round(time.monotonic() - started, 3),
                    "attempts": len(statuses),
                    "statuses": statuses,
                }
            if resp.status_code not in (502, 503, 504):
                return {
                    "seconds": None,
                    "attempts": len(statuses),
                    "statuses": statuses,
                    "error": resp.text[:500],
                }
            time.sleep(min(max_wait, float(resp.headers.get("retry-after", "1") or 1)))
    return {"seconds": None, "attempts": len(statuses), "statuses": statuses, "error": "deadline passed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="base URL in front of /v1")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--deadline", type=float, default=1800.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    result = measure(args.url, args.key, args.model, args.deadline)
    print(json.dumps(result))
    return 0 if result["seconds"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
