"""The fal gateway: submit (sent exactly once), status, result and cancel, each bounded,
fal's answers classified. fal-client is imported lazily: it reads FAL_QUEUE_RUN_HOST at
import. See docs/architecture.md#starting-a-training.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from avatarsite.log_redaction import redact, redact_value
from monitoring import owner_messages
from monitoring.fal import payloads

logger = logging.getLogger("monitoring")


class FalError(Exception):
    """fal (or the way to it) answered not what we asked for. ``detail`` is redacted here,
    once for all: fal's text can echo our key ("No user found for Key ...")."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        self.detail = detail = redact(detail)
        self.status_code = status_code
        super().__init__(f"{status_code} {detail}" if status_code else detail)


class FalTransient(FalError):
    """Try again later: timeouts, transport errors, 408/409/429, 5xx."""


class FalAuthError(FalError):
    """401 (key rejected) or 403 (account locked, e.g. balance exhausted)."""


class FalNotFound(FalError):
    """404: fal does not know this request (believed only after it repeats)."""


class FalJobFailed(FalError):
    """The job failed: its result fetch answered 4xx with fal's reason."""

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        error_type: str = "",
        detail_types: tuple[str, ...] = (),
    ) -> None:
        super().__init__(detail, status_code=status_code)
        self.error_type = error_type
        # detail[].type of a model error: what monitoring.owner_messages reads.
        self.detail_types = detail_types


class FalRefused(FalError):
    """fal refused the submit (or it never left this machine): no job, nothing billed."""


class FalSubmitUnknown(FalError):
    """The submit may have reached fal but no usable answer came back."""


@dataclass(frozen=True)
class SubmitAnswer:
    request_id: str
    status_url: str = ""
    response_url: str = ""
    cancel_url: str = ""
    queue_position: int | None = None
    gateway_request_id: str = ""


@dataclass(frozen=True)
class FalStatusReport:
    status: str  # IN_QUEUE, IN_PROGRESS or COMPLETED: fal has no FAILED status
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = field(default=None, repr=False)
    error: str | None = None
    error_type: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "COMPLETED" and bool(self.error)


def webhook_url() -> str:
    base = settings.PUBLIC_BASE_URL
    return base.rstrip("/") + "/webhooks/fal/" if base else ""


def _key() -> str:
    if not settings.FAL_KEY:
        raise FalAuthError("FAL_KEY is not configured", status_code=401)
    return settings.FAL_KEY


def _app_id(endpoint: str) -> str:
    # Status, result and cancel use only owner/app, never a sub-path (fal answers 405).
    return "/".join(endpoint.split("/")[:2])


def submit(training: Any) -> SubmitAnswer:
    """One POST to fal's queue for ``training`` (its endpoint, arguments and webhook URL)."""
    import requests
    from fal_client.client import QUEUE_URL_FORMAT
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    # Our key, and how long fal keeps the files this training produces (until we copied them).
    headers = {"Authorization": f"Key {_key()}"}
    seconds = settings.FAL_MEDIA_EXPIRATION_SECONDS
    if seconds is not None:
        lifecycle = json.dumps({"expiration_duration_seconds": seconds})
        headers["X-Fal-Object-Lifecycle-Preference"] = lifecycle
    deadline = getattr(training, "start_deadline_seconds", None)
    if deadline:
        # fal ends a job not started in time with 504 request_timeout; two header names.
        headers["X-Fal-Request-Timeout"] = headers["X-Fal-Request-Start-Timeout"] = str(deadline)
    timeout = settings.FAL_SUBMIT_TIMEOUT_SECONDS
    try:
        response = requests.post(
            # fal-client's own queue address, so our submit and its calls reach the same queue.
            QUEUE_URL_FORMAT + training.endpoint,
            params={"fal_webhook": training.webhook_url} if training.webhook_url else None,
            json=training.arguments,
            headers=headers,
            timeout=(min(10.0, timeout), timeout),
            # requests ignores SSL_CERT_FILE; httpx (fal-client) trusts it: the same bundle.
            verify=os.environ.get("SSL_CERT_FILE") or True,
            allow_redirects=False,
        )
    except (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError) as exc:
        raise FalRefused(f"could not reach fal: {type(exc).__name__}") from exc
    except requests.exceptions.ConnectionError as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, (NewConnectionError, ConnectTimeoutError, NameResolutionError)):
            # The connection was never made: the request cannot have reached fal.
            raise FalRefused(f"could not connect to fal: {type(reason).__name__}") from exc
        raise FalSubmitUnknown(f"connection lost after sending: {type(exc).__name__}") from exc
    except requests.exceptions.RequestException as exc:
        raise FalSubmitUnknown(f"no answer from fal: {type(exc).__name__}") from exc

    try:
        body = response.json()
    except ValueError:
        body = None
    code = response.status_code
    if 200 <= code < 300:
        if not isinstance(body, dict) or not body.get("request_id"):
            raise FalSubmitUnknown(f"fal answered {code} without a request id", status_code=code)
        return SubmitAnswer(
            request_id=str(body["request_id"]),
            status_url=body.get("status_url") or "",
            response_url=body.get("response_url") or "",
            cancel_url=body.get("cancel_url") or "",
            queue_position=body.get("queue_position"),
            gateway_request_id=str(body.get("gateway_request_id") or ""),
        )
    detail = payloads.error_detail(body, response.text[:500] or response.reason)
    if code >= 500:
        # fal says it does not bill 5xx, but a gateway error may hide a created job.
        raise FalSubmitUnknown(detail, status_code=code)
    raise FalRefused(detail, status_code=code)


def _classify(exc: BaseException, *, for_result: bool = False) -> FalError:
    from fal_client.auth import MissingCredentialsError
    from fal_client.client import FalClientHTTPError

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return FalTransient(f"no answer within {settings.FAL_CALL_TIMEOUT_SECONDS:g} s")
    if isinstance(exc, MissingCredentialsError):
        return FalAuthError("FAL_KEY is not configured", status_code=401)
    if isinstance(exc, FalClientHTTPError):
        code = exc.status_code
        # fal's detail is text, or a list of {loc, msg, type} for validation errors.
        detail = payloads.error_detail({"detail": exc.message}, str(exc.message))[:1000]
        if code in (401, 403):
            return FalAuthError(detail, status_code=code)
        if code == 404:
            return FalNotFound(detail, status_code=code)
        if code in (408, 409, 429) or code >= 500:
            # Even for a result: a failed job's error shows in the status, read first.
            return FalTransient(detail, status_code=code)
        if for_result:
            return FalJobFailed(
                detail,
                status_code=code,
                error_type=exc.error_type or "",
                detail_types=tuple(owner_messages.detail_types({"detail": exc.message})),
            )
        return FalTransient(f"unexpected answer: {detail}", status_code=code)
    if isinstance(exc, (KeyError, ValueError)):
        return FalTransient(f"unreadable answer: {type(exc).__name__}: {exc}"[:500])
    return FalTransient(f"{type(exc).__name__}: {exc}"[:500])


class FalSession:
    """fal-client's AsyncClient for one event loop, every call bounded in wall time."""

    def __init__(self) -> None:
        import fal_client

        self.timeout = settings.FAL_CALL_TIMEOUT_SECONDS
        self._client = fal_client.AsyncClient(key=_key())

    async def __aenter__(self) -> FalSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # fal-client never closes its httpx client: close it inside this loop.
        with contextlib.suppress(Exception):
            await (await self._client._client).aclose()

    async def _bounded(self, coro: Any, *, timeout: float | None, for_result: bool = False) -> Any:
        try:
            return await asyncio.wait_for(
                coro, timeout=self.timeout if timeout is None else max(timeout, 0.01)
            )
        except Exception as exc:  # noqa: BLE001 - every answer is classified
            raise _classify(exc, for_result=for_result) from exc

    async def status(
        self,
        endpoint: str,
        request_id: str,
        *,
        with_logs: bool = False,
        timeout: float | None = None,
    ) -> FalStatusReport:
        import fal_client

        answer = await self._bounded(
            self._client.status(_app_id(endpoint), request_id, with_logs=with_logs), timeout=timeout
        )
        if isinstance(answer, fal_client.Queued):
            return FalStatusReport("IN_QUEUE", queue_position=answer.position)
        # fal's texts (logs, the error of a failed job) are redacted before anyone keeps them.
        logs = redact_value(answer.logs) if isinstance(answer.logs, list) else None
        if isinstance(answer, fal_client.InProgress):
            return FalStatusReport("IN_PROGRESS", logs=logs)
        return FalStatusReport(
            "COMPLETED",
            logs=logs,
            error=redact(answer.error) if isinstance(answer.error, str) else answer.error,
            error_type=answer.error_type,
        )

    async def result(self, endpoint: str, request_id: str, *, timeout: float | None = None) -> dict:
        # Only after a status call said COMPLETED: fal-client's result() polls until then.
        answer = await self._bounded(
            self._client.result(_app_id(endpoint), request_id), timeout=timeout, for_result=True
        )
        if not isinstance(answer, dict):
            raise FalTransient(f"unreadable result: {type(answer).__name__}")
        return redact_value(answer)

    async def cancel(self, endpoint: str, request_id: str, *, timeout: float | None = None) -> str:
        try:
            await self._bounded(self._client.cancel(_app_id(endpoint), request_id), timeout=timeout)
        except FalError as exc:  # 400 and 404 are fal's answers, not failures
            if exc.status_code in (400, 404):
                return "ALREADY_COMPLETED" if exc.status_code == 400 else "NOT_FOUND"
            raise
        return "CANCELLATION_REQUESTED"


def _run(method: str, *args: Any, **kwargs: Any) -> Any:
    async def call() -> Any:
        async with FalSession() as session:
            return await getattr(session, method)(*args, **kwargs)

    return asyncio.run(call())


def status(endpoint: str, request_id: str, *, with_logs: bool = False) -> FalStatusReport:
    """fal's status for one request, in at most FAL_CALL_TIMEOUT_SECONDS."""
    return _run("status", endpoint, request_id, with_logs=with_logs)


def result(endpoint: str, request_id: str) -> dict:
    """The result of a request that a status call reported COMPLETED."""
    return _run("result", endpoint, request_id)


def cancel(endpoint: str, request_id: str) -> str:
    """Ask fal to cancel: CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND."""
    return _run("cancel", endpoint, request_id)
