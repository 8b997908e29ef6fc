"""A fal queue emulator on loopback HTTPS, for the tests, the benchmark and the demo.

It speaks the parts of fal's queue API the monitor uses, with fal's response shapes
and error codes (see ``shared/fal-facts.md``):

    POST /{owner}/{app}[?fal_webhook=URL]          submit
    GET  /{owner}/{app}/requests/{id}/status       status (``?logs=1|true`` adds logs)
    GET  /{owner}/{app}/requests/{id}              result
    PUT  /{owner}/{app}/requests/{id}/cancel       cancel
    GET  /.well-known/jwks.json                    the webhook signing keys

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

    python -m fakes.fal_emulator --state-dir DIR [--port N]

writes ``DIR/emulator.env`` once listening and serves until SIGINT/SIGTERM. There,
jobs are scripted from their input: an images URL containing ``fail`` fails,
``stuck`` stays in the queue, anything else queues ~10 s, trains ~30 s and completes.
"""

from __future__ import annotations

import argparse
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    # Seconds each status call takes before answering.
    latency: float | None = None
    # What a cancel does to a job that has not finished: "error" (it ends COMPLETED
    # with an error), "gone" (status answers 404 afterwards), "ignore" (it completes anyway).
    on_cancel: str = "error"
    logs: tuple[str, ...] = ("Preparing images", "Training step 100/1000", "Training step 900/1000")
    deliver_webhook: bool = True
    # A custom result payload (default: a LoRA and its config as fal File objects).
    result: dict | None = None


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
    cancelled: bool = False
    gone: bool = False
    webhook_sent: bool = False

    def state(self, now: float | None = None) -> str:
        if self.finished_at is not None:
            return "COMPLETED"
        now = time.monotonic() if now is None else now
        elapsed = now - self.submitted_at
        if elapsed < self.script.queue_seconds:
            return "IN_QUEUE"
        if elapsed < self.script.queue_seconds + self.script.run_seconds:
            return "IN_PROGRESS"
        return "COMPLETED"

    def failure(self) -> tuple[str, str | None] | None:
        if self.forced_error is not None:
            return self.forced_error
        if self.script.error is not None:
            return self.script.error, self.script.error_type
        return None


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
    ) -> None:
        self.signer = signer or WebhookSigner()
        self.status_latency = status_latency
        self.deliver_webhooks = deliver_webhooks
        # Benchmark mode: an unknown request id is treated as a job that keeps running.
        self.adopt_unknown = adopt_unknown
        # Demo mode: jobs scripted from their images URL (see the module docstring).
        self.script_from_input = script_from_input
        self._port = port
        self._own_dir = state_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="fal-emulator-")) if state_dir is None else state_dir
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.cert_file = ""
        self.reset()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> FalEmulator:
        cert, key = make_self_signed_cert(self._dir / "tls")
        self.cert_file = str(cert)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = _Server(("127.0.0.1", self._port), _Handler, context, self)
        self._stopping.clear()
        for target, name in ((self._server.serve_forever, "serve"), (self._webhook_loop, "webhooks")):
            thread = threading.Thread(target=target, name=f"fal-emulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> FalEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the emulator first"
        return self._server.server_address[1]

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

    def env(self) -> dict[str, str]:
        """The environment a process under test needs to reach this emulator."""
        return {
            "FAL_QUEUE_RUN_HOST": self.host,
            "SSL_CERT_FILE": self.cert_file,
            "FAL_WEBHOOK_JWKS_URL": self.jwks_url,
        }

    # --- scripting ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every job, script, counter and recorded delivery (between tests)."""
        with self._lock:
            self.jobs: dict[str, Job] = {}
            self.default_script = JobScript()
            self._matchers: list[tuple[Callable[[dict], bool], JobScript]] = []
            self.submissions: list[dict] = []
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

    def refuse_next_submit(self, status_code: int = 422, body: dict | None = None, times: int = 1) -> None:
        """The next ``times`` submits answer ``status_code`` and create no job."""
        if body is None:
            body = {
                401: {"detail": "No user found for Key ID and Secret"},
                403: {"detail": "User is locked. Reason: Exhausted balance"},
            }.get(
                status_code,
                {"detail": [{"loc": ["body", "images_data_url"], "msg": "field required", "type": "value_error.missing"}]},
            )
        with self._lock:
            self._submit_refusals.extend([(status_code, body)] * times)

    def finish(self, request_id: str, *, error: str | None = None, error_type: str | None = None) -> None:
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

    def webhook_for(self, request_id: str, *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
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
        job = Job(
            request_id=str(uuid.uuid4()),
            endpoint=endpoint,
            payload=payload,
            webhook_url=webhook_url,
            script=script,
        )
        self.jobs[job.request_id] = job
        return job

    def _job(self, endpoint: str, request_id: str) -> Job | None:
        job = self.jobs.get(request_id)
        if job is None and self.adopt_unknown:
            job = Job(request_id, endpoint, {}, None, JobScript(queue_seconds=0, run_seconds=FOREVER))
            self.jobs[request_id] = job
        if job is None or job.endpoint != endpoint or job.gone:
            return None
        return job

    def _urls(self, endpoint: str, request_id: str) -> dict[str, str]:
        base = f"{self.base_url}/{endpoint}/requests/{request_id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _result_payload(self, job: Job) -> dict:
        return job.script.result if job.script.result is not None else lora_payload(job.request_id)

    def _webhook_body(self, job: Job) -> bytes:
        failure = job.failure()
        if failure is None:
            return delivery_body(job.request_id, payload=self._result_payload(job))
        message, _error_type = failure
        return delivery_body(
            job.request_id,
            status="ERROR",
            error=f"Invalid status code: {job.script.result_status}",
            payload={"detail": [{"msg": message, "type": "value_error"}]},
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
                    for job in self.jobs.values()
                    if job.webhook_url and not job.webhook_sent and job.state(now) == "COMPLETED"
                ]
                for job in due:
                    job.webhook_sent = True
            for job in due:
                body = self._webhook_body(job)
                headers = self.signer.headers(body, job.request_id)
                record = {"request_id": job.request_id, "url": self.webhook_target or job.webhook_url}
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address, handler, context: ssl.SSLContext, emulator: FalEmulator) -> None:
        self.context = context
        self.emulator = emulator
        super().__init__(address, handler)

    def get_request(self):
        sock, address = super().get_request()
        # The TLS handshake happens in the request's own thread (see _Handler.setup),
        # so a slow client cannot stall the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as fal's ingress does
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(30)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.close_connection = True
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug(format, *args)

    # --- plumbing ------------------------------------------------------------------

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorised(self, *, submit: bool = False) -> bool:
        emulator = self.server.emulator
        header = self.headers.get("Authorization", "")
        key = header[4:] if header.startswith("Key ") else ""
        if not key or ":" not in key or (emulator.expected_key and key != emulator.expected_key):
            self._send(401, {"detail": "No user found for Key ID and Secret"})
            return False
        if submit and emulator.locked_reason:
            self._send(403, {"detail": f"User is locked. Reason: {emulator.locked_reason}"})
            return False
        return True

    def _route(self) -> tuple[str, str | None, str | None]:
        """(endpoint 'owner/app', request id or None, action 'status'/'cancel'/None)."""
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
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

    # --- verbs ---------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        emulator = self.server.emulator
        if urlsplit(self.path).path == "/.well-known/jwks.json":
            self._send(200, emulator.signer.jwks())
            return
        if not self._authorised():
            return
        endpoint, request_id, action = self._route()
        if action == "invalid" or request_id is None:
            self._send(405, {"detail": "Method Not Allowed"})
            return
        if action == "status":
            self._status(endpoint, request_id)
        elif action is None:
            self._result(endpoint, request_id)
        else:
            self._send(405, {"detail": "Method Not Allowed"})

    def do_POST(self) -> None:  # noqa: N802
        emulator = self.server.emulator
        body = self._read_body()
        if not self._authorised(submit=True):
            return
        endpoint, request_id, action = self._route()
        if request_id is not None or action is not None:
            self._send(405, {"detail": "Method Not Allowed"})
            return
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            self._send(422, {"detail": [{"msg": "Invalid JSON body", "type": "value_error.jsondecode"}]})
            return
        webhook = parse_qs(urlsplit(self.path).query).get("fal_webhook", [None])[0]
        with emulator._lock:
            emulator.submissions.append(
                {"endpoint": endpoint, "payload": payload, "webhook_url": webhook}
            )
            refusal = emulator._submit_refusals.pop(0) if emulator._submit_refusals else None
            latency = emulator.submit_latency
            job = None if refusal else emulator._create_job(endpoint, payload, webhook)
        if latency:
            time.sleep(latency)
        if refusal is not None:
            self._send(*refusal)
            return
        assert job is not None
        self._send(
            200,
            {
                "request_id": job.request_id,
                "gateway_request_id": job.request_id,
                "queue_position": job.script.queue_position,
                **emulator._urls(endpoint, job.request_id),
            },
        )

    def do_PUT(self) -> None:  # noqa: N802
        emulator = self.server.emulator
        self._read_body()
        if not self._authorised():
            return
        endpoint, request_id, action = self._route()
        if action != "cancel" or request_id is None:
            self._send(405, {"detail": "Method Not Allowed"})
            return
        with emulator._lock:
            emulator.cancel_calls[request_id] += 1
            job = emulator._job(endpoint, request_id)
            if job is None:
                answer = (404, {"status": "NOT_FOUND"})
            elif job.state() == "COMPLETED":
                answer = (400, {"status": "ALREADY_COMPLETED"})
            else:
                job.cancelled = True
                if job.script.on_cancel == "error":
                    job.finished_at = time.monotonic()
                    job.forced_error = ("Request was cancelled by the user", "request_cancelled")
                elif job.script.on_cancel == "gone":
                    job.gone = True
                answer = (202, {"status": "CANCELLATION_REQUESTED"})
        self._send(*answer)

    def _status(self, endpoint: str, request_id: str) -> None:
        emulator = self.server.emulator
        with emulator._lock:
            emulator.status_calls[request_id] += 1
            job = emulator._job(endpoint, request_id)
            script = job.script if job else None
            latency = emulator.status_latency if script is None or script.latency is None else script.latency
            injected = None
            if script is not None and script.status_error is not None:
                if script.status_error_times == 0:
                    injected = script.status_error
                elif script.status_error_times > 0:
                    script.status_error_times -= 1
                    injected = script.status_error
                    if script.status_error_times == 0:
                        script.status_error = None
            if job is not None and injected is None:
                state = job.state()
                body: dict[str, Any] = {
                    "status": state,
                    "request_id": request_id,
                    **emulator._urls(endpoint, request_id),
                }
                with_logs = parse_qs(urlsplit(self.path).query).get("logs", ["0"])[0] in ("1", "true", "True")
                elapsed = time.monotonic() - job.submitted_at
                logs = [
                    {"message": message, "level": "INFO", "source": "user", "timestamp": f"{elapsed:.1f}"}
                    for message in job.script.logs
                ]
                if state == "IN_QUEUE":
                    body["queue_position"] = job.script.queue_position
                    body["logs"] = None
                elif state == "IN_PROGRESS":
                    body["logs"] = logs[:-1] if with_logs else None
                else:
                    body["logs"] = logs if with_logs else None
                    body["metrics"] = {"inference_time": round(job.script.run_seconds, 3)}
                    failure = job.failure()
                    if failure is not None:
                        body["error"], body["error_type"] = failure
        if latency:
            time.sleep(latency)
        if injected is not None:
            self._send(injected, _error_body(injected))
        elif job is None:
            self._send(404, {"status": "NOT_FOUND"})
        else:
            self._send(200 if body["status"] == "COMPLETED" else 202, body)

    def _result(self, endpoint: str, request_id: str) -> None:
        emulator = self.server.emulator
        with emulator._lock:
            emulator.result_calls[request_id] += 1
            job = emulator._job(endpoint, request_id)
            if job is None:
                answer: tuple[int, Any] = (404, {"status": "NOT_FOUND"})
            elif job.state() != "COMPLETED":
                answer = (400, {"detail": "Request is still in progress"})
            elif job.script.result_error is not None:
                code = job.script.result_error
                answer = (
                    code,
                    {"detail": [{"loc": ["body"], "msg": "Output validation failed", "type": "value_error"}]}
                    if code == 422
                    else _error_body(code),
                )
            elif (failure := job.failure()) is not None:
                message, error_type = failure
                if job.script.result_status == 422:
                    answer = (422, {"detail": [{"loc": ["body"], "msg": message, "type": error_type or "value_error"}]})
                else:
                    answer = (job.script.result_status, {"detail": message, "error_type": error_type})
            else:
                answer = (200, emulator._result_payload(job))
        self._send(*answer)


def _error_body(status: int) -> dict:
    return {
        401: {"detail": "No user found for Key ID and Secret"},
        403: {"detail": "User is locked. Reason: Exhausted balance"},
        404: {"status": "NOT_FOUND"},
        429: {"detail": "Too many requests"},
    }.get(status, {"detail": f"Internal error ({status})", "error_type": "internal_error"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fal queue emulator on loopback HTTPS.")
    parser.add_argument("--state-dir", required=True, type=Path, help="where emulator.env and the certificate go")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--status-latency", type=float, default=0.0, help="seconds per status call")
    parser.add_argument(
        "--adopt-unknown", action="store_true", help="treat unknown request ids as running jobs (benchmark)"
    )
    parser.add_argument("--no-webhooks", action="store_true", help="never deliver webhooks")
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
    ).start()
    env_file = args.state_dir / "emulator.env"
    tmp = env_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{name}={value}\n" for name, value in emulator.env().items()))
    tmp.replace(env_file)  # readers never see a half-written file
    logger.info("DEMO fal emulator listening on %s (env in %s)", emulator.base_url, env_file)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    emulator.stop()
    env_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
