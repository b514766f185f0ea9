"""Priority admission: when the engine is saturated, keys below a priority are refused first.

Saturation is read where each engine shows it: for vLLM, `vllm:num_requests_waiting` from its
`/metrics` (polled in the background); for llama.cpp, which runs one request at a time and has no
queue metric, the number of requests this pod has let through and not yet finished. Either way the
pod is saturated when that number reaches `LLM_POD_SATURATION_QUEUE` (0 turns admission off), and
then keys with a priority below `LLM_POD_PRIORITY_MIN_UNDER_LOAD` get 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp

from sidecar.metrics import Metrics
from sidecar.request_end import InFlight
from sidecar.settings import Settings

logger = logging.getLogger(__name__)

VLLM_WAITING = re.compile(r"^vllm:num_requests_waiting(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


def vllm_waiting(metrics_text: str) -> float | None:
    values = [float(v) for v in VLLM_WAITING.findall(metrics_text)]
    return sum(values) if values else None


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics, in_flight: InFlight) -> None:
        self.settings = settings
        self.metrics = metrics
        self.in_flight = in_flight
        self.engine_waiting = 0.0  # vLLM only, refreshed by `poll_vllm`

    @property
    def enabled(self) -> bool:
        return self.settings.saturation_queue > 0

    def load(self) -> float:
        if self.settings.engine_type == "vllm":
            return self.engine_waiting
        return float(self.in_flight.count())

    def refuses(self, priority: int) -> bool:
        if not self.enabled or priority >= self.settings.priority_min_under_load:
            return False
        return self.load() >= self.settings.saturation_queue

    async def poll_vllm(self, interval: float = 0.5) -> None:
        url = self.settings.engine_url + "/metrics"
        timeout = aiohttp.ClientTimeout(total=2, connect=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(url) as resp:
                        waiting = vllm_waiting(await resp.text()) if resp.status == 200 else None
                except (aiohttp.ClientError, TimeoutError):
                    waiting = None
                # Unknown load is not saturation: admission only ever refuses on evidence.
                self.engine_waiting = waiting or 0.0
                self.metrics.engine_waiting.set(self.engine_waiting)
                await asyncio.sleep(interval)
