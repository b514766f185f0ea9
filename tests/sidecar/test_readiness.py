"""The readiness state machine, fed observations directly."""

from __future__ import annotations

import pytest

from sidecar.readiness import Probe, ProbeResult, Readiness, State

LISTED = ProbeResult(Probe.LISTED)
REFUSED = ProbeResult(Probe.REFUSED, "nothing listens")
TIMEOUT = ProbeResult(Probe.TIMEOUT, "slow")


def test_starts_loading_and_turns_ready_when_listed() -> None:
    r = Readiness(started_at=100.0)
    assert r.state is State.LOADING
    assert not r.ready
    assert r.observe(REFUSED, 101.0) is False  # still loading: no change
    assert r.state is State.LOADING
    assert r.observe(LISTED, 104.5) is True
    assert r.ready
    assert r.cold_start_seconds == pytest.approx(4.5)


def test_refused_after_ready_is_unreachable_and_cold_start_is_kept() -> None:
    r = Readiness(0.0)
    r.observe(LISTED, 2.0)
    r.observe(REFUSED, 3.0)
    assert r.state is State.UNREACHABLE
    r.observe(LISTED, 9.0)
    assert r.ready
    assert r.cold_start_seconds == 2.0


def test_a_busy_engine_stays_ready_but_a_slow_start_is_loading() -> None:
    r = Readiness(0.0)
    r.observe(TIMEOUT, 1.0)
    assert r.state is State.LOADING
    r.observe(LISTED, 2.0)
    assert r.observe(TIMEOUT, 3.0) is False
    assert r.ready


def test_model_missing_and_error_statuses() -> None:
    r = Readiness(0.0)
    r.observe(ProbeResult(Probe.MISSING, "listed: other"), 1.0)
    assert r.state is State.MODEL_MISSING
    assert "listed: other" in r.message()
    r.observe(ProbeResult(Probe.NOT_OK, "/v1/models answered 503"), 2.0)
    assert r.state is State.LOADING


def test_draining_is_final() -> None:
    r = Readiness(0.0)
    r.observe(LISTED, 1.0)
    r.drain(2.0)
    assert r.state is State.DRAINING
    assert not r.ready
    assert r.observe(LISTED, 3.0) is False
    assert r.state is State.DRAINING


def test_a_ready_engine_silent_for_the_hung_bound_is_taken_out_until_it_answers() -> None:
    r = Readiness(0.0, hung_after=60.0)
    r.observe(LISTED, 1.0)
    for now in range(10, 70, 10):  # silent from 10 s: still ready at 60 s (50 s of silence)
        assert r.observe(TIMEOUT, float(now)) is False
    assert r.ready
    r.observe(LISTED, 65.0)  # an answer ends the streak
    assert r.observe(TIMEOUT, 70.0) is False
    assert r.observe(TIMEOUT, 129.0) is False
    assert r.observe(TIMEOUT, 130.0) is True  # 60 s without an answer
    assert r.state is State.UNRESPONSIVE
    assert "no answer to /v1/models for 60 s" in r.message()
    assert r.observe(TIMEOUT, 200.0) is False
    assert r.observe(LISTED, 201.0) is True
    assert r.ready


def test_a_completed_request_is_proof_of_life_for_a_busy_engine() -> None:
    """llama-cpp-python answers /v1/models only between generations: under a steady queue every probe
    times out while requests keep completing. Those completions (nginx's request-end line with the
    engine's 2xx) keep the pod in service; a hung engine completes none."""
    r = Readiness(0.0, hung_after=60.0)
    r.observe(LISTED, 1.0)
    for now in range(10, 200, 10):
        assert r.observe(TIMEOUT, float(now)) is False
        if now % 50 == 0:
            assert r.engine_answered(float(now) + 1) is False  # already ready: no change
    assert r.ready
    # The last completion was at 151: the silence counts from the next timeout (160).
    assert r.observe(TIMEOUT, 219.0) is False
    assert r.observe(TIMEOUT, 220.0) is True
    assert r.state is State.UNRESPONSIVE
    assert r.engine_answered(225.0) is True  # a completion ends it
    assert r.ready
