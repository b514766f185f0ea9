"""The cold-start timer: time from the first request to the first completed answer, as JSON.

    LLM_POD_API_KEY=sk-lp-... python -m loadtest.coldstart --url https://llm.example.org/gemma-3-270m

`--url` is the base in front of `/v1`, with the per-model prefix when routing by path. Behind the
KEDA HTTP add-on's interceptor (keda/cold-start.md) this measures a scale from zero as a client sees
it: the interceptor holds the first request while KEDA scales the Deployment up, the pod is
scheduled, pulls its images, fetches and loads the model, and only then forwards it. So scale the
Deployment to zero first, and give `--deadline` (and the interceptor's readiness timeout) room for
all of that. `--header 'Host: llm.example.org'` routes by host instead of path.

A 502/503/504 (the cold-start placeholder, a pod still loading, an interceptor timeout) or a refused
connection is retried after its Retry-After (at most `--max-wait` seconds, 1 s without one); a
200 ends the measurement; any other status (401, 403, 429, ...) stops it: that is no cold start.
Prints one JSON object: `seconds` (null when no answer came), `attempts`, the `statuses` seen in
order, and `error` when it failed. Exits 0 only with a completed answer.

The key comes from LLM_POD_API_KEY (or `--key`, which other users of the machine can see in `ps`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

RETRIED = (502, 503, 504)


def retry_after(resp: httpx.Response, max_wait: float) -> float:
    try:
        wait = float(resp.headers.get("retry-after", "1"))
    except ValueError:  # an HTTP date: not worth parsing for a timer that polls anyway
        wait = 1.0
    return min(max(wait, 0.1), max_wait)


def measure(
    url: str,
    key: str,
    model: str,
    deadline_s: float,
    max_wait: float = 30.0,
    headers: dict[str, str] | None = None,
) -> dict[str, object]:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}
    sent = {**(headers or {}), "Authorization": f"Bearer {key}"}
    endpoint = url.rstrip("/") + "/v1/chat/completions"
    started = time.monotonic()
    statuses: list[int | str] = []

    def result(seconds: float | None, error: str | None = None) -> dict[str, object]:
        out: dict[str, object] = {"seconds": seconds, "attempts": len(statuses), "statuses": statuses}
        if error is not None:
            out["error"] = error
        return out

    with httpx.Client(timeout=httpx.Timeout(deadline_s, connect=10)) as client:
        while (left := deadline_s - (time.monotonic() - started)) > 0:
            try:
                resp = client.post(endpoint, json=body, headers=sent, timeout=httpx.Timeout(left, connect=10))
            except httpx.HTTPError as err:
                statuses.append(type(err).__name__)
                time.sleep(min(1.0, max(left, 0)))
                continue
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                return result(round(time.monotonic() - started, 3))
            if resp.status_code not in RETRIED:
                return result(None, resp.text[:500])
            time.sleep(min(retry_after(resp, max_wait), max(left, 0)))
    return result(None, "deadline passed")


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.coldstart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="base URL in front of /v1")
    parser.add_argument(
        "--key", default=os.environ.get("LLM_POD_API_KEY", ""), help="default: $LLM_POD_API_KEY"
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--deadline", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--max-wait", type=float, default=30.0, help="longest pause between attempts")
    parser.add_argument("--header", type=parse_header, action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("no key: set LLM_POD_API_KEY or pass --key")
    result = measure(args.url, args.key, args.model, args.deadline, args.max_wait, dict(args.header))
    print(json.dumps(result))
    return 0 if result["seconds"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
