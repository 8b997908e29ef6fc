"""A fal queue emulator on loopback HTTPS, for the tests, the benchmark and the demo.

It speaks the parts of fal's queue API the monitor uses, with fal's response shapes
and error codes (as fal documents them and as they were seen from fal):

    POST /{owner}/{app}[?fal_webhook=URL]          submit
    GET  /{owner}/{app}/requests/{id}/status       status (``?logs=1|true`` adds logs)
    GET  /{owner}/{app}/requests/{id}              result
    PUT  /{owner}/{app}/requests/{id}/cancel       cancel
    GET  /.well-known/jwks.json                    the webhook signing keys
    GET  /v1/models/requests/by-endpoint           fal's record (Platform API) of the
                                                   finished jobs, with fal's filters,
                                                   ``expand=payloads`` and cursor pages
    GET  /v1/models/billing-events                 billing events of finished jobs (after
                                                   ``billing_lag`` seconds), admin key
    GET  /v1/account/billing?expand=credits        the balance (``balance``), admin key
    GET  /v1/models/pricing                        unit prices (``prices``), admin key
    GET  /fal-files/{id}/{name}                    a job's result files (fal's CDN), when
                                                   ``serve_files`` is on: real bytes, public

The real fal-client reaches it through its own settings, with no monkeypatching:
``FAL_QUEUE_RUN_HOST=<emulator.host>`` (read when fal_client is first imported) and
``SSL_CERT_FILE=<emulator.cert_file>`` (httpx trusts it). fal-client always speaks
https, which is why this is an HTTPS server with a self-signed certificate.

Each job follows a ``JobScript``: how long it waits in the queue and runs, whether
it fails, whether its status calls answer 404/429/5xx (a few times or always), how
slow each status call is. Scripts are attached by request id or by a predicate on
the submitted input, so a test can script a job before it exists. When a job ends,
a signed webhook is POSTed (in a background thread) to the ``fal_webhook`` URL of
its submit, unless webhooks are dropped.

Command line (the demo and ``bin/run``)::

    python -m fakes.fal_emulator --state-dir DIR [--port N] [--status-latency S]
                                 [--adopt-unknown] [--no-webhooks]

writes ``DIR/emulator.env`` once listening and serves until SIGINT/SIGTERM. There,
jobs are scripted from their input: an images URL containing ``fail`` fails,
``stuck`` stays in the queue, anything else queues ~10 s, trains ~30 s and completes.
``--adopt-unknown`` (the benchmark) treats any request id as a job still running.

Tests use the ``fal`` fixture (tests/fixtures_fal.py) and script jobs, e.g.::

    fal.script(queue_seconds=600)                      # every job submitted from now on
    fal.script("fail.zip", error="No faces", error_type="face_error")  # input matches
    fal.script(request_id, status_error=503, status_error_times=2)     # an existing job
    fal.finish(request_id)            fal.drop_webhooks()          fal.status_calls[request_id]

Result files: with ``serve_files`` on (the demo; tests set ``fal.serve_files = True``)
a job's result points at this emulator's HTTPS port (``/fal-files/...``, allowed by the
FAL_MEDIA_ALLOWED_HOSTS of ``env()``) and the files are real bytes (``file_size`` bytes
of LoRA, deterministic per job; ``--file-size`` on the command line). Files can break::

    fal.break_file(request_id, "expire")            # 404 from now on (fal deleted it)
    fal.break_file(request_id, "fail", times=2)     # 503 twice, then fine
    fal.break_file(request_id, "truncate")          # the connection is cut half way
    fal.break_file(request_id, "corrupt")           # one byte short of fal's file_size
    fal.break_file(request_id, "redirect")          # 302 to another host
    fal.file_bytes(request_id)  fal.file_requests[request_id]

fal's record (point FAL_PLATFORM_API_URL at ``emulator.platform_url``) lists every
finished job; scripts shape what it and the queue say afterwards::

    fal.script(queue_forgets_after=0)      # the queue answers 404 once the job ended;
                                           # the record keeps the payload
    fal.script(lose_submit_answer=True)    # the job is created, the answer never comes
    fal.script(record_payload=False)       # the record lists the job without payloads
    fal.fail_platform(429, times=2)        fal.platform_latency = 5.0
    fal.add_record("fal-ai/flux-lora-portrait-trainer", json_input={...})  # bulk, bench

Money, with fal's shapes: a finished job is billed ``steps`` (its input, else the
trainer's default) times its endpoint's unit price, unless it failed with a 5xx or was
cancelled; the event appears ``billing_lag`` seconds after the job ended::

    fal.billing_lag = 300                  fal.script(billed=False)   # never billed
    fal.billing_clock_ahead = 400          # the lag has passed, as far as billing can tell
    fal.balance = Decimal("8.50")          # below ``lock_below`` (5): submits answer 403
    fal.prices["fal-ai/flux-lora-portrait-trainer"] = ("0.0027", "steps")
    fal.admin_key = "admin:key"            # billing answers 403 to any other key
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakes.fal_signing import WebhookSigner, delivery_body, lora_payload
from fakes.tls import make_self_signed_cert

logger = logging.getLogger("fakes.fal_emulator")

FOREVER = float("inf")


@dataclasses.dataclass
class JobScript:
    """How one job behaves. Every field has a harmless default: a job that completes at once."""

    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    queue_position: int = 0
    # Ends COMPLETED with this error (fal's way of saying "failed").
    error: str | None = None
    error_type: str | None = None
    # What a result fetch answers for a failed job (fal: 422 with a detail list, or 5xx).
    result_status: int = 422
    # A result fetch answers this code even though the status shows no error (fal's
    # 422 for a job whose output failed validation).
    result_error: int | None = None
    # Answer every status call with this HTTP code (404, 429, 500, 503, 401, 403...).
    status_error: int | None = None
    # ...or only the next N status calls (then behave normally).
    status_error_times: int = 0
    # The body of those injected answers (and of ``result_error``/``cancel_error``)
    # instead of fal's usual one: e.g. a detail that echoes the key.
    error_body: dict | None = None
    # Answer the job's cancel with this HTTP code (401, 500...) instead of acting on it.
    cancel_error: int | None = None
    # Seconds each status call takes before answering.
    latency: float | None = None
    # What a cancel does to a job that has not finished: "error" (it ends COMPLETED
    # with an error), "gone" (status answers 404 afterwards), "ignore" (it completes anyway).
    on_cancel: str = "error"
    # The code of the failure a cancel ends in (fal: client_cancelled; None: no code).
    cancel_error_type: str | None = "client_cancelled"
    logs: tuple[str, ...] = ("Preparing images", "Training step 100/1000", "Training step 900/1000")
    deliver_webhook: bool = True
    # A custom result payload (default: a LoRA and its config as fal File objects).
    result: dict | None = None
    # The queue forgets the job's status and result this many seconds after it ended
    # (fal: one hour); fal's record keeps it.
    queue_forgets_after: float | None = None
    # The submit creates the job, then the connection drops before the answer.
    lose_submit_answer: bool = False
    # fal's record lists the job without json_input/json_output (payload storage off).
    record_payload: bool = True
    # Only the first N jobs with the same input fail with ``error``; later ones succeed
    # (0: every job fails). fal's own failures are often gone at the next attempt.
    fail_first: int = 0
    # Whether fal bills the job (None: fal's rule, billed unless a 5xx or a cancel).
    billed: bool | None = None


def _merge(script: JobScript, changes: dict[str, Any]) -> JobScript:
    unknown = set(changes) - {f.name for f in dataclasses.fields(JobScript)}
    if unknown:
        raise TypeError(f"unknown JobScript fields: {', '.join(sorted(unknown))}")
    return dataclasses.replace(script, **changes)


@dataclasses.dataclass
class Job:
    request_id: str
    endpoint: str  # owner/app
    payload: dict
    webhook_url: str | None
    script: JobScript
    submitted_at: float = dataclasses.field(default_factory=time.monotonic)
    finished_at: float | None = None  # forced end (finish() or cancel)
    forced_error: tuple[str, str | None] | None = None
    forced_status: int | None = None  # the HTTP status of a forced failure (a cancel: 499)
    cancelled: bool = False
    gone: bool = False
    webhook_sent: bool = False
    # Wall-clock times for fal's record: (sent, started, ended) in Unix seconds, for
    # jobs written straight into the record (``add_record``).
    record_times: tuple[float, float, float] | None = None
    # Which job with this input it is (1 for the first), for ``fail_first``.
    nth_of_input: int = 1
    # The start deadline sent with the submit (X-Fal-Request-Timeout), in seconds.
    start_deadline: float | None = None

    def _missed_start(self) -> bool:
        """fal ends a job that did not start within its start deadline (504, type user)."""
        return self.start_deadline is not None and self.script.queue_seconds > self.start_deadline

    def ended(self) -> float | None:
        """When the job ended (monotonic), None while it runs."""
        if self.finished_at is not None:
            return self.finished_at
        end = self.submitted_at + self.script.queue_seconds + self.script.run_seconds
        if self._missed_start():
            end = self.submitted_at + (self.start_deadline or 0.0)
        return end if end <= time.monotonic() else None

    def forgotten(self) -> bool:
        """Whether the queue no longer knows this job (its record still does)."""
        after = self.script.queue_forgets_after
        ended = self.ended()
        return after is not None and ended is not None and time.monotonic() >= ended + after

    def state(self, now: float | None = None) -> str:
        if self.finished_at is not None:
            return "COMPLETED"
        now = time.monotonic() if now is None else now
        elapsed = now - self.submitted_at
        if self._missed_start() and elapsed >= (self.start_deadline or 0.0):
            return "COMPLETED"
        if elapsed < self.script.queue_seconds:
            return "IN_QUEUE"
        if elapsed < self.script.queue_seconds + self.script.run_seconds:
            return "IN_PROGRESS"
        return "COMPLETED"

    def failure(self) -> tuple[str, str | None] | None:
        if self.forced_error is not None:
            return self.forced_error
        if self._missed_start():
            return "Request timed out before it started", "request_timeout"
        if self.script.error is not None and not (
            self.script.fail_first and self.nth_of_input > self.script.fail_first
        ):
            return self.script.error, self.script.error_type
        return None

    def error_answer(self) -> tuple[int, dict[str, Any]] | None:
        """fal's answer for a failed job, the same on every path (result, webhook, record):
        a 422 with a typed ``detail`` list for the model's errors (the owner's photos),
        a flat ``{"detail", "error_type"}`` for fal's own failures (shared/fal-facts.md)."""
        failure = self.failure()
        if failure is None:
            return None
        message, error_type = failure
        status = self.forced_status or (504 if self._missed_start() else self.script.result_status)
        if status == 422:
            return 422, {
                "detail": [{"loc": ["body"], "msg": message, "type": error_type or "value_error"}]
            }
        return status, {"detail": message, "error_type": error_type}


class FalEmulator:
    """The emulator; ``start()`` it, point fal-client at ``.host``, ``stop()`` it."""

    def __init__(
        self,
        signer: WebhookSigner | None = None,
        status_latency: float = 0.0,
        deliver_webhooks: bool = True,
        *,
        port: int = 0,
        state_dir: Path | None = None,
        adopt_unknown: bool = False,
        script_from_input: bool = False,
        serve_files: bool = False,
        file_size: int = 64 * 1024,
    ) -> None:
        self.signer = signer or WebhookSigner()
        self.status_latency = status_latency
        self.deliver_webhooks = deliver_webhooks
        # Benchmark mode: an unknown request id is treated as a job that keeps running.
        self.adopt_unknown = adopt_unknown
        # Demo mode: jobs scripted from their images URL (see the module docstring).
        self.script_from_input = script_from_input
        self._serve_files_default = serve_files
        self._file_size_default = file_size
        self._port = port
        self._own_dir = state_dir is None
        self._dir = (
            Path(tempfile.mkdtemp(prefix="fal-emulator-")) if state_dir is None else state_dir
        )
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_stop: asyncio.Event | None = None
        self._bound_port: int | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        # Monotonic job times + this offset = Unix time (fal's record shows wall clock).
        self._wall_offset = time.time() - time.monotonic()
        self.cert_file = ""
        self.reset()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> FalEmulator:
        cert, key = make_self_signed_cert(self._dir / "tls")
        self.cert_file = str(cert)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._stopping.clear()
        ready = threading.Event()
        responder = _Responder(self)

        # One asyncio loop serves every connection: thousands of slow (scripted latency)
        # status calls cost no thread each, and the emulator stays light next to the
        # worker it is measured against.
        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop

            async def main() -> None:
                server = await asyncio.start_server(
                    lambda r, w: _serve_connection(responder, r, w),
                    "127.0.0.1",
                    self._port,
                    ssl=context,
                    backlog=1024,
                )
                self._bound_port = server.sockets[0].getsockname()[1]
                self._server_stop = asyncio.Event()
                ready.set()
                async with server:
                    await self._server_stop.wait()

            try:
                loop.run_until_complete(main())
                # Kept-alive connections still wait for a next request: end them quietly.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

        for target, name in ((serve, "serve"), (self._webhook_loop, "webhooks")):
            thread = threading.Thread(target=target, name=f"fal-emulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not ready.wait(10):
            raise RuntimeError("the fal emulator did not start")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None and self._server_stop is not None:
            self._loop.call_soon_threadsafe(self._server_stop.set)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._loop = None
        self._server_stop = None

    # --- kept across a restart (the demo's state directory) ------------------------

    _MONOTONIC_FIELDS = ("submitted_at", "finished_at")

    def save_jobs(self, path: Path) -> int:
        """Write every job to ``path`` (JSON, times as wall clock); how many."""
        with self._lock:
            rows = []
            for job in self.jobs.values():
                row = dataclasses.asdict(job)
                for name in self._MONOTONIC_FIELDS:
                    if row[name] is not None:
                        row[name] += self._wall_offset
                rows.append(row)
            data = {"jobs": rows, "per_input": dict(self._jobs_per_input)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
        return len(rows)

    def load_jobs(self, path: Path) -> int:
        """Read the jobs ``save_jobs`` wrote (a restarted demo keeps its running trainings:
        their clocks go on from where they were, as fal's would)."""
        if not path.exists():
            return 0
        data = json.loads(path.read_text())
        with self._lock:
            for row in data["jobs"]:
                row["script"] = JobScript(**{**row["script"], "logs": tuple(row["script"]["logs"])})
                for name in self._MONOTONIC_FIELDS:
                    if row[name] is not None:
                        row[name] -= self._wall_offset
                for name in ("forced_error", "record_times"):
                    if row[name] is not None:
                        row[name] = tuple(row[name])
                job = Job(**row)
                self.jobs[job.request_id] = job
                if job.webhook_url and not job.webhook_sent:
                    self._awaiting_webhook.add(job.request_id)
            self._jobs_per_input.update(data.get("per_input", {}))
        return len(data["jobs"])

    def __enter__(self) -> FalEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._bound_port is not None, "start() the emulator first"
        return self._bound_port

    @property
    def host(self) -> str:
        """The value for FAL_QUEUE_RUN_HOST."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.host}"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def platform_url(self) -> str:
        """The value for FAL_PLATFORM_API_URL (fal's record)."""
        return f"{self.base_url}/v1"

    @property
    def media_rule(self) -> str:
        """The FAL_MEDIA_ALLOWED_HOSTS entry for the files this emulator serves."""
        return "127.0.0.1/fal-files/"

    def env(self) -> dict[str, str]:
        """The environment a process under test needs to reach this emulator."""
        return {
            "FAL_QUEUE_RUN_HOST": self.host,
            "SSL_CERT_FILE": self.cert_file,
            "FAL_WEBHOOK_JWKS_URL": self.jwks_url,
            "FAL_PLATFORM_API_URL": self.platform_url,
            "FAL_MEDIA_ALLOWED_HOSTS": ",".join(
                ["fal.media", "*.fal.media", "storage.googleapis.com/falserverless/"]
                + [self.media_rule]
            ),
        }

    # --- scripting ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every job, script, counter and recorded delivery (between tests)."""
        with self._lock:
            self.jobs: dict[str, Job] = {}
            # Jobs whose webhook is still to be sent: the delivery loop looks only here.
            self._awaiting_webhook: set[str] = set()
            self.default_script = JobScript()
            self._matchers: list[tuple[Callable[[dict], bool], JobScript]] = []
            self.submissions: list[dict] = []
            self._jobs_per_input: Counter[str] = Counter()
            self.status_calls: Counter[str] = Counter()
            self.result_calls: Counter[str] = Counter()
            self.cancel_calls: Counter[str] = Counter()
            self.deliveries: list[dict] = []
            self.dropped_webhooks: list[dict] = []
            self.drop_all_webhooks = False
            self._drop_ids: set[str] = set()
            # Account-level answers: a key the emulator accepts (None: any key), and a
            # lock reason (403 on submit only, as fal does for an exhausted balance).
            self.expected_key: str | None = None
            self.locked_reason: str | None = None
            # The next N submits are refused with (status, body), or answer after a delay.
            self._submit_refusals: list[tuple[int, dict]] = []
            self.submit_latency = 0.0
            self.webhook_target: str | None = None
            # fal's record: the query of every call, and injected trouble (the next
            # ``platform_error_times`` calls, or every call when 0, answer this code).
            self.platform_calls: list[dict[str, list[str]]] = []
            self.platform_error: int | None = None
            self.platform_error_times = 0
            self.platform_latency = 0.0
            # Result files (fal's CDN): served by this emulator when on.
            self.serve_files = self._serve_files_default
            self.file_size = self._file_size_default
            self.file_requests: Counter[str] = Counter()
            self._file_faults: dict[str, list] = {}
            # Money: billing events appear this long after a job ends; the balance (fal
            # locks submits below ``lock_below``); unit prices; the key billing accepts
            # (None: any key the queue accepts).
            self.billing_lag = 0.0
            # Seconds added to the clock billing events are read by: lets a test see a
            # lag of minutes or hours pass without waiting for it.
            self.billing_clock_ahead = 0.0
            self.balance = Decimal("1000.00")
            self.lock_below = Decimal("5.00")
            self.prices: dict[str, tuple[str, str]] = dict(DEFAULT_PRICES)
            self.admin_key: str | None = None

    def script(
        self,
        target: str | Callable[[dict], bool] | None = None,
        /,
        **changes: Any,
    ) -> None:
        """Script a job.

        ``target`` is a request id (an existing job), a callable on the submitted input
        (jobs submitted from now on), a string that is not a known request id (matched
        as a substring of the submitted input's JSON), or None (the default for all
        jobs submitted from now on).
        """
        with self._lock:
            if target is None:
                self.default_script = _merge(self.default_script, changes)
            elif isinstance(target, str) and target in self.jobs:
                job = self.jobs[target]
                job.script = _merge(job.script, changes)
            elif isinstance(target, str):
                needle = target
                self._matchers.append(
                    (lambda payload: needle in json.dumps(payload), _merge(JobScript(), changes))
                )
            else:
                self._matchers.append((target, _merge(JobScript(), changes)))

    def refuse_next_submit(
        self, status_code: int = 422, body: dict | None = None, times: int = 1
    ) -> None:
        """The next ``times`` submits answer ``status_code`` and create no job."""
        if body is None:
            known: dict[int, dict] = {
                401: {"detail": "No user found for Key ID and Secret"},
                403: {"detail": "User is locked. Reason: Exhausted balance"},
            }
            body = known.get(
                status_code,
                {
                    "detail": [
                        {
                            "loc": ["body", "images_data_url"],
                            "msg": "field required",
                            "type": "value_error.missing",
                        }
                    ]
                },
            )
        with self._lock:
            self._submit_refusals.extend([(status_code, body)] * times)

    def fail_platform(self, status_code: int | None = 503, *, times: int = 0) -> None:
        """fal's record answers ``status_code`` (the next ``times`` calls, or all when 0)."""
        with self._lock:
            self.platform_error = status_code
            self.platform_error_times = times

    def add_record(
        self,
        endpoint: str,
        *,
        request_id: str | None = None,
        ended_ago: float = 60.0,
        duration: float = 30.0,
        json_input: dict | None = None,
        error: str | None = None,
        payload: bool = True,
    ) -> str:
        """A job that ended ``ended_ago`` seconds ago, as if submitted by someone else."""
        ended = time.time() - ended_ago
        job = Job(
            request_id=request_id or str(uuid.uuid4()),
            endpoint=endpoint,
            payload=json_input or {},
            webhook_url=None,
            script=JobScript(error=error, record_payload=payload),
            finished_at=time.monotonic() - ended_ago,
            record_times=(ended - duration - 1.0, ended - duration, ended),
        )
        with self._lock:
            self.jobs[job.request_id] = job
        return job.request_id

    def finish(
        self, request_id: str, *, error: str | None = None, error_type: str | None = None
    ) -> None:
        """End a job now (successfully, or with ``error``)."""
        with self._lock:
            job = self.jobs[request_id]
            job.finished_at = time.monotonic()
            if error is not None:
                job.forced_error = (error, error_type)

    def drop_webhooks(self, request_id: str | None = None) -> None:
        """Never deliver the webhook of ``request_id`` (or of any job, when None)."""
        with self._lock:
            if request_id is None:
                self.drop_all_webhooks = True
            else:
                self._drop_ids.add(request_id)

    def state_of(self, request_id: str) -> str:
        with self._lock:
            return self.jobs[request_id].state()

    def webhook_for(
        self, request_id: str, *, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and signed headers fal would deliver for a finished job (for tests to POST)."""
        with self._lock:
            job = self.jobs[request_id]
            body = self._webhook_body(job)
        return body, self.signer.headers(body, request_id, timestamp=timestamp)

    # --- job behaviour (called by the handler, under the lock) ------------------------

    def _create_job(self, endpoint: str, payload: dict, webhook_url: str | None) -> Job:
        script = self.default_script
        for matches, candidate in self._matchers:
            if matches(payload):
                script = candidate
        if self.script_from_input:
            script = _demo_script(payload)
        key = json.dumps(payload, sort_keys=True)
        self._jobs_per_input[key] += 1
        job = Job(
            request_id=str(uuid.uuid4()),
            endpoint=endpoint,
            payload=payload,
            webhook_url=webhook_url,
            script=script,
            nth_of_input=self._jobs_per_input[key],
        )
        self.jobs[job.request_id] = job
        if webhook_url:
            self._awaiting_webhook.add(job.request_id)
        return job

    def _job(self, endpoint: str, request_id: str) -> Job | None:
        job = self.jobs.get(request_id)
        if job is None and self.adopt_unknown:
            job = Job(
                request_id, endpoint, {}, None, JobScript(queue_seconds=0, run_seconds=FOREVER)
            )
            self.jobs[request_id] = job
        if job is None or job.endpoint != endpoint or job.gone:
            return None
        return job

    def _urls(self, endpoint: str, request_id: str) -> dict[str, str]:
        base = f"{self.base_url}/{endpoint}/requests/{request_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _result_payload(self, job: Job) -> dict:
        if job.script.result is not None:
            return job.script.result
        if self.serve_files:
            return self.files_payload(job.request_id)
        return lora_payload(job.request_id)

    # --- result files (fal's CDN) ---------------------------------------------------------

    def file_url(self, request_id: str, kind: str = "lora") -> str:
        return f"{self.base_url}/fal-files/{request_id}/{_FILE_NAMES[kind]}"

    def files_payload(self, request_id: str) -> dict:
        """A trainer's output whose files this emulator serves."""
        return {
            "diffusers_lora_file": {
                "url": self.file_url(request_id, "lora"),
                "content_type": "application/octet-stream",
                "file_name": _FILE_NAMES["lora"],
                "file_size": self.file_size,
            },
            "config_file": {
                "url": self.file_url(request_id, "config"),
                "content_type": "application/json",
                "file_name": _FILE_NAMES["config"],
                "file_size": len(_config_bytes(request_id)),
            },
        }

    def file_bytes(self, request_id: str, kind: str = "lora") -> bytes:
        """The whole file (tests; small sizes only)."""
        return b"".join(_file_chunks(request_id, kind, self.file_size))

    def break_file(
        self, request_id: str, fault: str, *, times: int = 0, kind: str = "lora"
    ) -> None:
        """expire | fail | truncate | corrupt | redirect: for ``times`` requests (0: always)."""
        if fault not in {"expire", "fail", "truncate", "corrupt", "redirect"}:
            raise ValueError(f"unknown file fault {fault!r}")
        with self._lock:
            self._file_faults[f"{request_id}/{_FILE_NAMES[kind]}"] = [fault, times]

    def _file(self, path: str) -> Answer:
        parts = [p for p in path.split("/") if p]
        if len(parts) != 3 or parts[2] not in _FILE_NAMES.values():
            return 404, {"detail": "Not Found"}, 0.0
        request_id, name = parts[1], parts[2]
        kind = "lora" if name == _FILE_NAMES["lora"] else "config"
        with self._lock:
            self.file_requests[request_id] += 1
            fault = None
            entry = self._file_faults.get(f"{request_id}/{name}")
            if entry is not None:
                fault = entry[0]
                if entry[1] > 0:
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._file_faults[f"{request_id}/{name}"]
            size = self.file_size
        full = size if kind == "lora" else len(_config_bytes(request_id))
        if fault == "expire":
            return 404, {"detail": "Not Found"}, 0.0
        if fault == "fail":
            return 503, _error_body(503), 0.0
        if fault == "redirect":
            return 302, FileBody(0, iter(()), location=f"https://elsewhere.example/{name}"), 0.0
        if fault == "corrupt":
            return 200, FileBody(full - 1, _file_chunks(request_id, kind, full - 1)), 0.0
        if fault == "truncate":
            return 200, FileBody(full, _file_chunks(request_id, kind, full // 2)), 0.0
        return 200, FileBody(full, _file_chunks(request_id, kind, full)), 0.0

    def _record_times(self, job: Job) -> tuple[float, float, float] | None:
        """(sent, started, ended) in Unix seconds, None while the job runs (not listed)."""
        if job.record_times is not None:
            return job.record_times
        ended = job.ended()
        if ended is None:
            return None
        sent = job.submitted_at + self._wall_offset
        end = ended + self._wall_offset
        return sent, min(sent + job.script.queue_seconds, end), end

    def _billing_event(self, job: Job, now: float) -> dict[str, Any] | None:
        """fal's billing event of a finished job, once ``billing_lag`` has passed."""
        times = self._record_times(job)
        if times is None or now < times[2] + self.billing_lag:
            return None
        code = self._record_status(job)
        billed = job.script.billed
        if billed is None:
            billed = code < 500 and not job.cancelled
        if not billed:
            return None
        price, _unit = self.prices.get(job.endpoint, ("0", "steps"))
        steps = job.payload.get("steps") if isinstance(job.payload, dict) else None
        if not isinstance(steps, int) or steps <= 0:
            steps = DEFAULT_STEPS.get(job.endpoint, 1000)
        return {
            "request_id": job.request_id,
            "endpoint_id": job.endpoint,
            "timestamp": _iso(times[2]),
            "output_units": steps,
            "unit_price": float(price),
            "percent_discount": 0,
            "cost_estimate_nano_usd": int(Decimal(price) * steps * 10**9),
        }

    def _record_status(self, job: Job) -> int:
        answer = job.error_answer()
        return 200 if answer is None else answer[0]

    def _record_item(self, job: Job, *, expand: bool) -> dict[str, Any]:
        times = self._record_times(job)
        assert times is not None
        sent, started, end = times
        code = self._record_status(job)
        item: dict[str, Any] = {
            "request_id": job.request_id,
            "endpoint_id": job.endpoint,
            "sent_at": _iso(sent),
            "started_at": _iso(started),
            "ended_at": _iso(end),
            "status_code": code,
            "duration": round(end - started, 3),
        }
        if expand and job.script.record_payload:
            item["json_input"] = job.payload
            answer = job.error_answer()
            item["json_output"] = self._result_payload(job) if answer is None else answer[1]
        return item

    def _webhook_body(self, job: Job) -> bytes:
        answer = job.error_answer()
        if answer is None:
            return delivery_body(job.request_id, payload=self._result_payload(job))
        status, body = answer
        return delivery_body(
            job.request_id, status="ERROR", error=f"Invalid status code: {status}", payload=body
        )

    # --- webhooks ---------------------------------------------------------------------

    def _webhook_loop(self) -> None:
        """Deliver each finished job's webhook once, like fal (loopback allowed here)."""
        import requests

        while not self._stopping.wait(0.05):
            if not self.deliver_webhooks:
                continue
            now = time.monotonic()
            with self._lock:
                due = [
                    job
                    for job in (self.jobs[rid] for rid in self._awaiting_webhook)
                    if job.state(now) == "COMPLETED"
                ]
                for job in due:
                    job.webhook_sent = True
                    self._awaiting_webhook.discard(job.request_id)
            for job in due:
                body = self._webhook_body(job)
                headers = self.signer.headers(body, job.request_id)
                record: dict[str, Any] = {
                    "request_id": job.request_id,
                    "url": self.webhook_target or job.webhook_url,
                }
                with self._lock:
                    dropped = (
                        self.drop_all_webhooks
                        or job.request_id in self._drop_ids
                        or not job.script.deliver_webhook
                    )
                if dropped:
                    self.dropped_webhooks.append(record)
                    continue
                try:
                    response = requests.post(
                        record["url"],
                        data=body,
                        headers={**headers, "Content-Type": "application/json"},
                        timeout=15,
                        allow_redirects=False,
                    )
                    record["status_code"] = response.status_code
                except requests.RequestException as exc:
                    record["error"] = str(exc)
                self.deliveries.append(record)


def _demo_script(payload: dict) -> JobScript:
    images = str(payload.get("images_data_url", ""))
    if "stuck" in images:
        return JobScript(queue_seconds=FOREVER, queue_position=3)
    if "fail" in images:
        return JobScript(
            queue_seconds=5,
            run_seconds=15,
            error="Could not extract enough faces from the training images",
            error_type="image_load_error",
        )
    return JobScript(queue_seconds=10, run_seconds=30, queue_position=1)


_REASONS = {
    200: "OK",
    202: "Accepted",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Request:
    """One parsed HTTP request: method, path with query, lower-cased headers, body."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        split = urlsplit(target)
        self.path = split.path
        self.query = parse_qs(split.query)

    def route(self) -> tuple[str, str | None, str | None]:
        """(endpoint 'owner/app', request id or None, action 'status'/'cancel'/None)."""
        parts = [p for p in self.path.split("/") if p]
        if len(parts) == 2:
            return "/".join(parts), None, None
        if len(parts) >= 4 and parts[2] == "requests":
            endpoint, request_id, rest = "/".join(parts[:2]), parts[3], parts[4:]
            if not rest:
                return endpoint, request_id, None
            if rest == ["status"]:
                return endpoint, request_id, "status"
            if rest == ["cancel"]:
                return endpoint, request_id, "cancel"
        # fal answers 405 for a sub-path in a status URL.
        return "", None, "invalid"


Answer = tuple[int, Any, float]  # (HTTP status, JSON body, seconds to wait before answering)


class _Responder:
    """fal's queue API as plain functions of a request (no sockets here)."""

    def __init__(self, emulator: FalEmulator) -> None:
        self.emulator = emulator

    def respond(self, request: _Request) -> Answer:
        emulator = self.emulator
        if request.method == "GET" and request.path == "/.well-known/jwks.json":
            return 200, emulator.signer.jwks(), 0.0
        if request.method == "GET" and request.path.startswith("/fal-files/"):
            # fal's CDN: public, no key.
            return emulator._file(request.path)
        denied = self._auth(request, submit=request.method == "POST")
        if denied is not None:
            return denied
        endpoint, request_id, action = request.route()
        if request.method == "GET" and request.path == "/v1/models/requests/by-endpoint":
            return self._record(request)
        if request.method == "GET" and request.path.startswith(_ADMIN_PATHS):
            return self._money(request)
        if request.method == "GET" and action == "status" and request_id:
            return self._status(request, endpoint, request_id)
        if request.method == "GET" and action is None and request_id:
            return self._result(endpoint, request_id)
        if request.method == "POST" and action is None and request_id is None:
            return self._submit(request, endpoint)
        if request.method == "PUT" and action == "cancel" and request_id:
            return self._cancel(endpoint, request_id)
        return 405, {"detail": "Method Not Allowed"}, 0.0

    def _auth(self, request: _Request, *, submit: bool) -> Answer | None:
        emulator = self.emulator
        header = request.headers.get("authorization", "")
        key = header[4:] if header.startswith("Key ") else ""
        if not key or ":" not in key or (emulator.expected_key and key != emulator.expected_key):
            return 401, {"detail": "No user found for Key ID and Secret"}, 0.0
        if submit and emulator.locked_reason:
            return 403, {"detail": f"User is locked. Reason: {emulator.locked_reason}"}, 0.0
        if submit and emulator.balance < emulator.lock_below:
            return 403, {"detail": "User is locked. Reason: Exhausted balance"}, 0.0
        if request.path.startswith(_ADMIN_PATHS) and emulator.admin_key not in (None, key):
            return 403, {"detail": "Admin API key required"}, 0.0
        return None

    def _submit(self, request: _Request, endpoint: str) -> Answer:
        emulator = self.emulator
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            return (
                422,
                {"detail": [{"msg": "Invalid JSON body", "type": "value_error.jsondecode"}]},
                0.0,
            )
        webhook = request.query.get("fal_webhook", [None])[0]
        with emulator._lock:
            emulator.submissions.append(
                {
                    "endpoint": endpoint,
                    "payload": payload,
                    "webhook_url": webhook,
                    "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
                }
            )
            refusal = emulator._submit_refusals.pop(0) if emulator._submit_refusals else None
            latency = emulator.submit_latency
            if refusal is not None:
                return refusal[0], refusal[1], latency
            job = emulator._create_job(endpoint, payload, webhook)
            deadline = request.headers.get("x-fal-request-timeout")
            if deadline and deadline.replace(".", "", 1).isdigit():
                job.start_deadline = float(deadline)
        if job.script.lose_submit_answer:
            return DROP_CONNECTION, None, latency
        body = {
            "request_id": job.request_id,
            "gateway_request_id": job.request_id,
            "queue_position": job.script.queue_position,
            **emulator._urls(endpoint, job.request_id),
        }
        return 200, body, latency

    def _platform_failure(self, request: _Request) -> Answer | None:
        """Record a Platform API call and answer the scripted error, if any (under the lock)."""
        emulator = self.emulator
        emulator.platform_calls.append(dict(request.query))
        if emulator.platform_error is None:
            return None
        code = emulator.platform_error
        if emulator.platform_error_times > 0:
            emulator.platform_error_times -= 1
            if emulator.platform_error_times == 0:
                emulator.platform_error = None
        return code, _error_body(code), emulator.platform_latency

    def _record(self, request: _Request) -> Answer:
        """fal's GET /v1/models/requests/by-endpoint over the emulator's finished jobs."""
        emulator = self.emulator
        query = {name: values[0] for name, values in request.query.items()}
        with emulator._lock:
            latency = emulator.platform_latency
            failure = self._platform_failure(request)
            if failure is not None:
                return failure
            endpoint = query.get("endpoint_id")
            if not endpoint:
                return 422, _validation("endpoint_id", "field required"), latency
            try:
                limit = int(query.get("limit", "50"))
                offset = int(query["cursor"]) if query.get("cursor") else 0
            except ValueError:
                return 422, _validation("limit", "not an integer"), latency
            if not 1 <= limit <= 100:
                return 422, _validation("limit", "must be between 1 and 100"), latency
            now = time.time()
            wanted = query.get("request_id")
            window = (90 if wanted else 1) * 86400
            start = _parse_iso(query["start"]) if query.get("start") else now - window
            end = _parse_iso(query["end"]) if query.get("end") else now + 1
            if start is None or end is None:
                return 422, _validation("start", "invalid datetime"), latency
            statuses = {"success": range(200, 300), "user_error": range(400, 500)}
            status = query.get("status")
            expand = query.get("expand") == "payloads"
            # Filter and sort on plain numbers; build fal's item dicts for one page only
            # (the benchmark pages through 10,000 jobs).
            by_duration = query.get("sort_by") == "duration"
            rows = []
            if wanted:
                candidates = [emulator.jobs[wanted]] if wanted in emulator.jobs else []
            else:
                candidates = list(emulator.jobs.values())
            for job in candidates:
                if job.endpoint != endpoint:
                    continue
                times = emulator._record_times(job)
                if times is None or not start <= times[2] < end:
                    continue
                code = emulator._record_status(job)
                if status == "error" and code < 500:
                    continue
                if status in statuses and code not in statuses[status]:
                    continue
                key = times[2] - times[1] if by_duration else times[2]
                rows.append((key, job.request_id, job))
            rows.sort(key=lambda row: (row[0], row[1]), reverse=True)
            page = [
                emulator._record_item(job, expand=expand)
                for _, _, job in rows[offset : offset + limit]
            ]
        more = offset + limit < len(rows)
        body = {
            "items": page,
            "has_more": more,
            "next_cursor": str(offset + limit) if more else None,
        }
        return 200, body, latency

    def _money(self, request: _Request) -> Answer:
        """fal's billing events, account balance and unit prices (Platform API)."""
        emulator = self.emulator
        with emulator._lock:
            latency = emulator.platform_latency
            failure = self._platform_failure(request)
            if failure is not None:
                return failure
            if request.path == "/v1/account/billing":
                credits = {"current_balance": float(emulator.balance), "currency": "USD"}
                body: dict[str, Any] = {"username": "emulated"}
                if "credits" in request.query.get("expand", []):
                    body["credits"] = credits
                return 200, body, latency
            ids = [v for raw in request.query.get("request_id", []) for v in raw.split(",") if v]
            endpoints = [
                v for raw in request.query.get("endpoint_id", []) for v in raw.split(",") if v
            ]
            if len(ids) > 50 or len(endpoints) > 50:
                return 422, _validation("request_id", "at most 50 values"), latency
            if request.path == "/v1/models/pricing":
                prices = [
                    {"endpoint_id": e, "unit_price": float(p), "unit": u, "currency": "USD"}
                    for e, (p, u) in sorted(emulator.prices.items())
                    if not endpoints or e in endpoints
                ]
                return 200, {"prices": prices, "next_cursor": None, "has_more": False}, latency
            query = {name: values[0] for name, values in request.query.items()}
            try:
                limit = int(query.get("limit", "50"))
                offset = int(query["cursor"]) if query.get("cursor") else 0
            except ValueError:
                return 422, _validation("limit", "not an integer"), latency
            now = time.time() + emulator.billing_clock_ahead
            start = _parse_iso(query["start"]) if query.get("start") else now - 86400
            end = _parse_iso(query["end"]) if query.get("end") else now + 1
            if start is None or end is None:
                return 422, _validation("start", "invalid datetime"), latency
            if end - start > 90 * 86400:
                return 422, _validation("start", "range at most 90 days"), latency
            jobs = (
                [emulator.jobs[i] for i in ids if i in emulator.jobs]
                if ids
                else list(emulator.jobs.values())
            )
            events = []
            for job in jobs:
                if endpoints and job.endpoint not in endpoints:
                    continue
                event = emulator._billing_event(job, now)
                if event is not None and start <= _parse_iso(event["timestamp"]) < end:  # type: ignore[operator]
                    events.append(event)
            events.sort(key=lambda e: (e["timestamp"], e["request_id"]))
            page = events[offset : offset + limit]
        more = offset + limit < len(events)
        return (
            200,
            {
                "billing_events": page,
                "has_more": more,
                "next_cursor": str(offset + limit) if more else None,
            },
            latency,
        )

    def _cancel(self, endpoint: str, request_id: str) -> Answer:
        emulator = self.emulator
        with emulator._lock:
            emulator.cancel_calls[request_id] += 1
            job = emulator._job(endpoint, request_id)
            if job is None:
                return 404, {"status": "NOT_FOUND"}, 0.0
            if job.script.cancel_error is not None:
                code = job.script.cancel_error
                return code, job.script.error_body or _error_body(code), 0.0
            if job.state() == "COMPLETED":
                return 400, {"status": "ALREADY_COMPLETED"}, 0.0
            job.cancelled = True
            if job.script.on_cancel == "error":
                job.finished_at = time.monotonic()
                job.forced_error = (
                    "Request was cancelled by the user",
                    job.script.cancel_error_type,
                )
                job.forced_status = 499
            elif job.script.on_cancel == "gone":
                job.gone = True
            return 202, {"status": "CANCELLATION_REQUESTED"}, 0.0

    def _status(self, request: _Request, endpoint: str, request_id: str) -> Answer:
        emulator = self.emulator
        with emulator._lock:
            emulator.status_calls[request_id] += 1
            job = emulator._job(endpoint, request_id)
            script = job.script if job else None
            latency = (
                emulator.status_latency
                if script is None or script.latency is None
                else script.latency
            )
            if script is not None and script.status_error is not None:
                injected = script.status_error
                if script.status_error_times > 0:
                    script.status_error_times -= 1
                    if script.status_error_times == 0:
                        script.status_error = None
                return injected, script.error_body or _error_body(injected), latency
            if job is None or job.forgotten():
                return 404, {"status": "NOT_FOUND"}, latency
            state = job.state()
            body: dict[str, Any] = {
                "status": state,
                "request_id": request_id,
                **emulator._urls(endpoint, request_id),
            }
            with_logs = request.query.get("logs", ["0"])[0] in ("1", "true", "True")
            elapsed = time.monotonic() - job.submitted_at
            logs = [
                {
                    "message": message,
                    "level": "INFO",
                    "source": "user",
                    "timestamp": f"{elapsed:.1f}",
                }
                for message in job.script.logs
            ]
            if state == "IN_QUEUE":
                body["queue_position"] = job.script.queue_position
                body["logs"] = None
            elif state == "IN_PROGRESS":
                body["logs"] = logs[:-1] if with_logs else None
            else:
                body["logs"] = logs if with_logs else None
                body["metrics"] = {"inference_time": round(min(job.script.run_seconds, 1e9), 3)}
                failure = job.failure()
                if failure is not None:
                    body["error"], body["error_type"] = failure
        return (200 if state == "COMPLETED" else 202), body, latency

    def _result(self, endpoint: str, request_id: str) -> Answer:
        emulator = self.emulator
        with emulator._lock:
            emulator.result_calls[request_id] += 1
            job = emulator._job(endpoint, request_id)
            if job is None or job.forgotten():
                return 404, {"status": "NOT_FOUND"}, 0.0
            if job.state() != "COMPLETED":
                return 400, {"detail": "Request is still in progress"}, 0.0
            if job.script.result_error is not None:
                code = job.script.result_error
                if job.script.error_body is not None:
                    return code, job.script.error_body, 0.0
                if code == 422:
                    detail = [
                        {"loc": ["body"], "msg": "Output validation failed", "type": "value_error"}
                    ]
                    return code, {"detail": detail}, 0.0
                return code, _error_body(code), 0.0
            answer = job.error_answer()
            if answer is not None:
                return answer[0], answer[1], 0.0
            return 200, emulator._result_payload(job), 0.0


async def _serve_connection(
    responder: _Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """HTTP/1.1 with keep-alive, as fal's ingress: one request after another per connection."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                return
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            status, payload, delay = responder.respond(_Request(method, target, headers, body))
            if delay:
                await asyncio.sleep(delay)
            if status == DROP_CONNECTION:
                return  # the request was acted on; its answer is lost
            if isinstance(payload, FileBody):
                location = f"Location: {payload.location}\r\n" if payload.location else ""
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    f"{location}Content-Length: {payload.length}\r\n\r\n".encode()
                )
                sent = 0
                for chunk in payload.chunks:
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
                if sent < payload.length:
                    return  # cut short of Content-Length: the connection just ends
                continue
            raw = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
                + raw
            )
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


DROP_CONNECTION = 0  # a pseudo status: close the connection without answering

_FILE_NAMES = {"lora": "pytorch_lora_weights.safetensors", "config": "config.json"}
_FILE_BLOCK = 1024 * 1024


@dataclasses.dataclass
class FileBody:
    """A file answer: ``length`` goes in Content-Length, ``chunks`` is what is sent."""

    length: int
    chunks: Any
    location: str = ""


def _config_bytes(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "trigger": "ohwx", "rank": 16}).encode()


_blocks: dict[str, bytes] = {}


def _file_chunks(request_id: str, kind: str, size: int):
    """``size`` bytes of a job's file: the same bytes every time, different per job."""
    if kind == "config":
        yield _config_bytes(request_id)[:size]
        return
    import random

    block = _blocks.get(request_id)
    if block is None:
        block = random.Random(request_id).randbytes(_FILE_BLOCK)
        if len(_blocks) > 64:
            _blocks.clear()
        _blocks[request_id] = block
    left = size
    while left > 0:
        piece = block[: min(left, _FILE_BLOCK)]
        left -= len(piece)
        yield piece


# Unit prices and default steps of the trainers (the portrait trainer is priced per step).
DEFAULT_PRICES = {
    "fal-ai/flux-lora-portrait-trainer": ("0.0027", "steps"),
    "fal-ai/flux-lora-fast-training": ("0.0024", "steps"),
}
DEFAULT_STEPS = {"fal-ai/flux-lora-portrait-trainer": 2500, "fal-ai/flux-lora-fast-training": 1000}
_ADMIN_PATHS = ("/v1/models/billing-events", "/v1/account/billing", "/v1/models/pricing")


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()


def _parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _validation(field: str, message: str) -> dict:
    return {"detail": [{"loc": ["query", field], "msg": message, "type": "value_error"}]}


def _error_body(status: int) -> dict:
    return {
        401: {"detail": "No user found for Key ID and Secret"},
        403: {"detail": "User is locked. Reason: Exhausted balance"},
        404: {"status": "NOT_FOUND"},
        429: {"detail": "Too many requests"},
    }.get(status, {"detail": f"Internal error ({status})", "error_type": "internal_error"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fal queue emulator on loopback HTTPS.")
    parser.add_argument(
        "--state-dir", required=True, type=Path, help="where emulator.env and the certificate go"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--status-latency", type=float, default=0.0, help="seconds per status call")
    parser.add_argument(
        "--adopt-unknown",
        action="store_true",
        help="treat unknown request ids as running jobs (benchmark)",
    )
    parser.add_argument("--no-webhooks", action="store_true", help="never deliver webhooks")
    parser.add_argument(
        "--file-size",
        type=int,
        default=64 * 1024,
        help="bytes of each LoRA file served at result URLs (benchmark: 94371840 for 90 MB)",
    )
    parser.add_argument(
        "--record-jobs",
        type=int,
        default=0,
        help="fill fal's record with N finished portrait jobs bench-rec-000000... (benchmark)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fal-emulator %(message)s")

    args.state_dir.mkdir(parents=True, exist_ok=True)
    emulator = FalEmulator(
        status_latency=args.status_latency,
        deliver_webhooks=not args.no_webhooks,
        port=args.port,
        state_dir=args.state_dir,
        adopt_unknown=args.adopt_unknown,
        script_from_input=not args.adopt_unknown,
        serve_files=True,
        file_size=args.file_size,
    ).start()
    for index in range(args.record_jobs):
        # Spread over the last 20 hours, inside reconcile_fal's default window.
        emulator.add_record(
            "fal-ai/flux-lora-portrait-trainer",
            request_id=f"bench-rec-{index:06d}",
            ended_ago=60 + index * 72_000 / max(args.record_jobs, 1),
            json_input={"images_data_url": f"https://bench/{index}.zip", "trigger_phrase": "b"},
        )
    # The jobs of the last run (a demo restart must not make fal forget its trainings).
    jobs_file = args.state_dir / "jobs.json"
    kept = emulator.load_jobs(jobs_file)
    if kept:
        logger.info("Kept %s job(s) from the last run (%s)", kept, jobs_file)
    env_file = args.state_dir / "emulator.env"
    tmp = env_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{name}={value}\n" for name, value in emulator.env().items()))
    tmp.replace(env_file)  # readers never see a half-written file
    logger.info("DEMO fal emulator listening on %s (env in %s)", emulator.base_url, env_file)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # A bare wait() can block signal delivery to the main thread: poll instead.
    while not stop.wait(0.5):
        pass
    emulator.stop()
    emulator.save_jobs(jobs_file)
    env_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
