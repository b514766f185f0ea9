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

METRIC_NAME = "vllm:num_requests_waiting"
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
        """Read vLLM's queue every `interval` until cancelled; nothing but cancellation ends it.

        A failed read, of any kind (no answer, a non-200, a body that does not decode or parse),
        sets the load to 0: unknown load is not saturation. It is logged once when a run of
        failures starts (with the traceback when it is not a connection problem) and once when
        the metric is read again, not every `interval`.
        """
        url = self.settings.engine_url + "/metrics"
        timeout = aiohttp.ClientTimeout(total=2, connect=0.5)
        failing = False
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                waiting: float | None = None
                problem, unexpected = "", None
                try:
                    async with session.get(url) as resp:
                        if resp.status != 200:
                            problem = f"HTTP {resp.status}"
                        else:
                            waiting = vllm_waiting(await resp.text())
                            problem = "" if waiting is not None else f"no {METRIC_NAME} in it"
                except (aiohttp.ClientError, TimeoutError) as err:
                    problem = f"{type(err).__name__}: {err}"
                except Exception as err:  # a body that does not decode, a number that does not parse, ...
                    problem, unexpected = type(err).__name__, err
                if problem and not failing:
                    logger.error(
                        "reading %s failed (%s); counting the engine's queue as 0 until it reads again",
                        url,
                        problem,
                        exc_info=unexpected,  # the traceback when it is not a connection problem
                    )
                elif not problem and failing:
                    logger.info("reading %s again: %g waiting", url, waiting)
                failing = bool(problem)
                # Unknown load is not saturation: admission only ever refuses on evidence.
                self.engine_waiting = waiting or 0.0
                self.metrics.engine_waiting.set(self.engine_waiting)
                await asyncio.sleep(interval)
