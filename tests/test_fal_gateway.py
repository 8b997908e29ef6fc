"""The fal gateway classifies every answer of fal's queue (real fal-client, the emulator)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from monitoring.fal import client as gateway
from monitoring.fal import payloads

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


@pytest.fixture
def emulator(fal):
    """The fal emulator (named so that ``fal`` can stay the gateway module's name here)."""
    return fal


def _training(**fields):
    endpoint, arguments = payloads.training_input(
        "portrait", images_url="https://example.com/a.zip", trigger_word="ohwx"
    )
    return SimpleNamespace(endpoint=endpoint, arguments=arguments, webhook_url="", **fields)


def _submitted(emulator) -> str:
    """Submit through the gateway to ``emulator``; returns the request id."""
    request_id = gateway.submit(_training()).request_id
    assert request_id in emulator.jobs
    return request_id


def test_status_reports_fals_three_states(emulator):
    emulator.script(queue_seconds=60, queue_position=3)
    request_id = _submitted(emulator)
    report = gateway.status(ENDPOINT, request_id)
    assert (report.status, report.queue_position) == ("IN_QUEUE", 3)
    emulator.script(request_id, queue_seconds=0, run_seconds=60)
    report = gateway.status(ENDPOINT, request_id, with_logs=True)
    assert report.status == "IN_PROGRESS" and report.logs
    emulator.finish(request_id, error="Boom", error_type="oom")
    report = gateway.status(ENDPOINT, request_id)
    assert (report.status, report.error, report.error_type, report.failed) == (
        "COMPLETED",
        "Boom",
        "oom",
        True,
    )


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (401, gateway.FalAuthError),
        (403, gateway.FalAuthError),
        (404, gateway.FalNotFound),
        (500, gateway.FalTransient),
        (503, gateway.FalTransient),
    ],
)
def test_status_errors_are_classified(emulator, code, error):
    request_id = _submitted(emulator)
    emulator.script(request_id, status_error=code)
    with pytest.raises(error) as raised:
        gateway.status(ENDPOINT, request_id)
    if code in (401, 403):
        assert raised.value.status_code == code and raised.value.detail


def test_a_rate_limited_status_is_transient_and_bounded_in_time(emulator, settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 0.5  # fal-client alone would retry 429 for ~50 s
    request_id = _submitted(emulator)
    emulator.script(request_id, status_error=429)
    began = time.monotonic()
    with pytest.raises(gateway.FalTransient):
        gateway.status(ENDPOINT, request_id)
    assert time.monotonic() - began < 2


def test_a_refused_result_is_the_jobs_failure_with_fals_message(emulator):
    emulator.script(result_error=422)
    request_id = _submitted(emulator)
    with pytest.raises(gateway.FalJobFailed) as raised:
        gateway.result(ENDPOINT, request_id)
    assert raised.value.detail == "Output validation failed"


def test_result_returns_the_lora_and_config(emulator):
    request_id = _submitted(emulator)
    assert payloads.lora_urls(gateway.result(ENDPOINT, request_id))[0].endswith(".safetensors")


def test_cancel_answers_are_named_like_fals(emulator):
    emulator.script(queue_seconds=60)
    request_id = _submitted(emulator)
    assert gateway.cancel(ENDPOINT, request_id) == "CANCELLATION_REQUESTED"
    assert gateway.cancel(ENDPOINT, request_id) == "ALREADY_COMPLETED"
    assert gateway.cancel(ENDPOINT, "unknown-request") == "NOT_FOUND"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (422, gateway.FalRefused),
        (401, gateway.FalRefused),
        (403, gateway.FalRefused),
        (429, gateway.FalRefused),
        (503, gateway.FalSubmitUnknown),
    ],
)
def test_submit_answers_are_classified(emulator, code, error):
    emulator.refuse_next_submit(code)
    with pytest.raises(error) as raised:
        gateway.submit(_training())
    assert raised.value.status_code == code


def test_a_submit_whose_answer_is_late_is_unknown_and_sent_once(emulator, settings):
    settings.FAL_SUBMIT_TIMEOUT_SECONDS = 1.0
    emulator.submit_latency = 2.0
    with pytest.raises(gateway.FalSubmitUnknown):
        gateway.submit(_training())
    assert len(emulator.submissions) == 1


def test_the_trainers_get_their_own_input_names():
    assert payloads.training_input(
        "portrait", images_url="u", trigger_word="t", extra={"steps": 9}
    ) == (
        "fal-ai/flux-lora-portrait-trainer",
        {"steps": 9, "images_data_url": "u", "trigger_phrase": "t"},
    )
    assert payloads.training_input(
        "style", images_url="u", trigger_word="t", extra={"trigger_word": "x"}
    ) == (
        "fal-ai/flux-lora-fast-training",
        {"images_data_url": "u", "trigger_word": "t", "is_style": True},
    )
    with pytest.raises(ValueError, match="unknown training type"):
        payloads.training_input("video", images_url="u", trigger_word="t")
