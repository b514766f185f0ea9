"""Readiness: the pod is ready only while the engine's /v1/models lists the served model.

A background watcher probes the engine (fast while not ready, slower once ready) and feeds a small
state machine, so `/readyz` answers from memory and a kubelet probe never waits on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from sidecar.errors import error_response
from sidecar.metrics import METRICS, Metrics
from sidecar.settings import Settings

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNREACHABLE = "engine_unreachable"
    MODEL_MISSING = "model_missing"
    UNRESPONSIVE = "engine_unresponsive"
    DRAINING = "draining"


class Probe(enum.Enum):
    LISTED = "listed"  # 200 and the served model is in the list
    MISSING = "missing"  # 200 but the model is not listed
    NOT_OK = "not_ok"  # the engine answered with another status (still loading, or broken)
    REFUSED = "refused"  # no connection: the engine is not listening
    TIMEOUT = "timeout"  # connected, no answer in time


@dataclass(frozen=True, slots=True)
class ProbeResult:
    kind: Probe
    detail: str = ""


_MESSAGES = {
    State.LOADING: "the engine is starting or loading the model",
    State.UNREACHABLE: "the engine is not accepting connections",
    State.MODEL_MISSING: "the engine answers but does not list the served model",
    State.UNRESPONSIVE: "the engine has accepted connections but answered no probe for too long",
    State.DRAINING: "the pod is shutting down",
}


class Readiness:
    """The readiness state machine. Pure: it is told what was observed and when."""

    def __init__(self, started_at: float, hung_after: float = 900.0) -> None:
        self.started_at = started_at
        self.hung_after = hung_after  # seconds of unanswered probes after which a ready engine is hung
        self.silent_since: float | None = None  # first probe timeout of the current streak
        self.state = State.LOADING
        self.detail = ""
        self.first_ready_at: float | None = None
        self.changed_at = started_at

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def cold_start_seconds(self) -> float | None:
        return None if self.first_ready_at is None else self.first_ready_at - self.started_at

    def message(self) -> str:
        text = _MESSAGES.get(self.state, "ready")
        return f"{text}: {self.detail}" if self.detail else text

    def _set(self, state: State, detail: str, now: float) -> bool:
        changed = state is not self.state
        if changed:
            self.changed_at = now
        self.state, self.detail = state, detail
        return changed

    def observe(self, result: ProbeResult, now: float) -> bool:
        """Apply one probe result; return True when the state changed."""
        if self.state is State.DRAINING:
            return False
        if result.kind is not Probe.TIMEOUT:
            self.silent_since = None
        match result.kind:
            case Probe.LISTED:
                if self.first_ready_at is None:
                    self.first_ready_at = now
                return self._set(State.READY, "", now)
            case Probe.MISSING:
                return self._set(State.MODEL_MISSING, result.detail, now)
            case Probe.NOT_OK:
                return self._set(State.LOADING, result.detail, now)
            case Probe.REFUSED:
                # Before the first success a closed port means "still starting"; after it, a crash.
                state = State.LOADING if self.first_ready_at is None else State.UNREACHABLE
                return self._set(state, result.detail, now)
            case Probe.TIMEOUT:
                # Some engines (llama-cpp-python) answer /v1/models only between generations: an open
                # connection that is slow to answer is a busy engine, and a busy pod stays in service.
                # But one that neither answers a probe nor completes a request (engine_answered) for
                # `hung_after` is hung: out of service until it does either again.
                if self.state in (State.READY, State.UNRESPONSIVE):
                    self.silent_since = now if self.silent_since is None else self.silent_since
                    if now - self.silent_since < self.hung_after:
                        return False
                    silent = f"no answer to /v1/models for {now - self.silent_since:.0f} s"
                    return self._set(State.UNRESPONSIVE, silent, now)
                return self._set(State.LOADING, result.detail, now)
        return False  # pragma: no cover - the match is exhaustive

    def engine_answered(self, now: float) -> bool:
        """The engine completed a request (nginx saw a 2xx): it is busy, not hung. Return True when
        the state changed."""
        self.silent_since = None
        if self.state is State.UNRESPONSIVE:
            return self._set(State.READY, "", now)
        return False

    def drain(self, now: float) -> None:
        self._set(State.DRAINING, "", now)


async def probe_engine(session: aiohttp.ClientSession, settings: Settings) -> ProbeResult:
    url = settings.engine_url + "/v1/models"
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return ProbeResult(Probe.NOT_OK, f"/v1/models answered {resp.status}")
            payload = await resp.json(content_type=None)
    except TimeoutError:
        return ProbeResult(
            Probe.TIMEOUT, f"/v1/models gave no answer within {settings.engine_probe_timeout} s"
        )
    except aiohttp.ClientConnectorError:
        return ProbeResult(Probe.REFUSED, f"nothing listens on 127.0.0.1:{settings.engine_port}")
    except (aiohttp.ClientError, ValueError) as err:
        return ProbeResult(Probe.NOT_OK, f"/v1/models failed: {type(err).__name__}")
    data = payload.get("data") if isinstance(payload, dict) else None
    ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    if settings.served_model in ids:
        return ProbeResult(Probe.LISTED)
    return ProbeResult(Probe.MISSING, f"listed: {', '.join(map(str, ids)) or 'nothing'}")


class EngineWatcher:
    """Keeps `Readiness` fresh from a background task."""

    def __init__(self, settings: Settings, metrics: Metrics, started_at: float | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.readiness = Readiness(
            time.monotonic() if started_at is None else started_at, settings.engine_hung_seconds
        )
        self._wake = asyncio.Event()
        self._publish()

    def _publish(self) -> None:
        r = self.readiness
        self.metrics.engine_ready.set(1 if r.ready else 0)
        for state in State:
            self.metrics.readiness_state.labels(state.value).set(1 if r.state is state else 0)
        if r.cold_start_seconds is not None:
            self.metrics.cold_start.set(r.cold_start_seconds)

    def apply(self, result: ProbeResult) -> None:
        if result.kind is Probe.TIMEOUT:
            self.metrics.engine_probe_timeouts.inc()
        was_never_ready = self.readiness.first_ready_at is None
        if self.readiness.observe(result, time.monotonic()):
            r = self.readiness
            if r.ready and was_never_ready:
                logger.info(
                    "engine ready: %s listed after %.2f s", self.settings.served_model, r.cold_start_seconds
                )
            elif r.ready:
                logger.info("engine ready again")
            else:
                logger.warning("not ready (%s): %s", r.state.value, r.message())
        self._publish()

    def engine_answered(self) -> None:
        if self.readiness.engine_answered(time.monotonic()):
            logger.info("engine ready again: it completed a request")
            self._publish()

    def drain(self) -> None:
        self.readiness.drain(time.monotonic())
        self._publish()
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.engine_probe_timeout, connect=0.5)
        # A fresh connection per probe: a kept-alive socket to a dead engine would hide the crash.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while self.readiness.state is not State.DRAINING:
                self.apply(await probe_engine(session, self.settings))
                pause = (
                    self.settings.ready_poll_slow if self.readiness.ready else self.settings.ready_poll_fast
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)


ENGINE = web.AppKey("engine", EngineWatcher)


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[ENGINE].readiness
    if readiness.ready:
        return web.json_response(
            {"status": "ready", "model": request.app[ENGINE].settings.served_model},
            headers={"Cache-Control": "no-store"},
        )
    resp = error_response(
        503, readiness.message(), code=readiness.state.value, extra={"status": readiness.state.value}
    )
    resp.headers["Retry-After"] = "1"
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def healthz(request: web.Request) -> web.Response:
    # The sidecar itself: never the engine, so a slow model load cannot get the pod killed.
    return web.json_response({"status": "ok"})


def setup_readiness(app: web.Application, settings: Settings) -> None:
    async def watcher_ctx(app: web.Application) -> AsyncIterator[None]:
        watcher = EngineWatcher(settings, app[METRICS])
        app[ENGINE] = watcher
        task = asyncio.create_task(watcher.run(), name="engine-watcher")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watcher_ctx)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
