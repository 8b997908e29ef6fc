"""What fal said about a finished request, whatever brought it: every source builds a
``FalOutcome`` here (all reading of fal's shapes), ``results.apply`` acts on it
(docs/fal.md, "One outcome path")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from monitoring import owner_messages
from monitoring.fal import payloads
from monitoring.fal.client import FalJobFailed, FalStatusReport
from monitoring.fal.platform import RecordItem

_STATUS_CODE = re.compile(r"\bstatus code:? ([1-5][0-9]{2})\b", re.IGNORECASE)


class Kind(StrEnum):
    SUCCEEDED = "succeeded"  # with a LoRA file URL
    FAILED = "failed"
    NO_LORA = "no_lora"  # finished without an error, but this answer holds no LoRA file


class AnsweredBy(StrEnum):
    """Which of fal's sources said it; decides where to look when it cannot tell."""

    WEBHOOK = "webhook"
    QUEUE = "queue"
    RECORD = "fal_record"


@dataclass(frozen=True)
class FalOutcome:
    kind: Kind
    answered_by: AnsweredBy
    lora_url: str = ""
    config_url: str = ""
    result: Any = None  # fal's payload as it came, kept on the training
    http_status: int | None = None
    error_type: str = ""
    detail_types: tuple[str, ...] = ()
    message: str = ""
    # False when fal kept or sent no payload at all (not stored, not serialisable).
    has_payload: bool = True
    gateway_request_id: str = ""
    # When fal says the request ended (its record's ended_at), for the service figures.
    finished_at: datetime | None = None

    @classmethod
    def _finished(cls, answered_by: AnsweredBy, output: Any, **extra: Any) -> FalOutcome:
        urls = payloads.lora_urls(output)
        if urls is None:
            message = "the result has no LoRA file (diffusers_lora_file.url)"
            return cls(Kind.NO_LORA, answered_by, result=output, message=message, **extra)
        return cls(Kind.SUCCEEDED, answered_by, *urls, result=output, **extra)

    @classmethod
    def _failed(
        cls,
        answered_by: AnsweredBy,
        *,
        body: Any,
        message: str,
        http_status: int | None = None,
        error_type: Any = "",
        types: tuple[str, ...] | None = None,
        **extra: Any,
    ) -> FalOutcome:
        """One rule for every source: fal's code, else the first detail type, else the status."""
        if types is None:
            types = tuple(owner_messages.detail_types(body))
        if not error_type and isinstance(body, dict):
            error_type = body.get("error_type")
        if not isinstance(error_type, str) or not error_type:
            error_type = types[0] if types else f"http_{http_status}" if http_status else ""
        return cls(
            Kind.FAILED,
            answered_by,
            result=body,
            http_status=http_status,
            error_type=(error_type or "fal_error")[:128],
            detail_types=types,
            message=message or "fal reported an error without a message",
            **extra,
        )

    @classmethod
    def from_webhook(cls, data: dict[str, Any]) -> FalOutcome:
        """A verified delivery: ``{"status": "OK" | "ERROR", "payload", "error"?, ...}``."""
        gateway = data.get("gateway_request_id")
        gateway = gateway[:128] if isinstance(gateway, str) else ""
        payload = data.get("payload")
        if data.get("status") != "ERROR":
            if payload is None:  # fal could not serialise it (payload_error)
                why = data.get("payload_error")
                return cls(
                    Kind.NO_LORA,
                    AnsweredBy.WEBHOOK,
                    message=why if isinstance(why, str) and why else "the payload is missing",
                    has_payload=False,
                    gateway_request_id=gateway,
                )
            return cls._finished(AnsweredBy.WEBHOOK, payload, gateway_request_id=gateway)
        error = data.get("error") if isinstance(data.get("error"), str) else ""
        # "Invalid status code: 422" is fal's only word on the result's HTTP status.
        code = _STATUS_CODE.search(error or "")
        reasons = payloads.detail_messages(payload)
        return cls._failed(
            AnsweredBy.WEBHOOK,
            body=payload,
            message=f"{error}: {reasons}" if error and reasons else error or reasons,
            http_status=int(code.group(1)) if code else None,
            error_type=data.get("error_type"),
            gateway_request_id=gateway,
        )

    @classmethod
    def from_queue(
        cls,
        report: FalStatusReport,
        result: dict | None = None,
        refused: FalJobFailed | None = None,
    ) -> FalOutcome | None:
        """A COMPLETED status with its result (or its refusal); None until the queue says."""
        if report.status != "COMPLETED":
            return None
        if report.error:
            return cls._failed(
                AnsweredBy.QUEUE, body=None, message=report.error, error_type=report.error_type
            )
        if refused is not None:
            return cls._failed(
                AnsweredBy.QUEUE,
                body=None,
                message=refused.detail,
                http_status=refused.status_code,
                error_type=refused.error_type,
                types=refused.detail_types,
            )
        if result is None:
            return None
        return cls._finished(AnsweredBy.QUEUE, result)

    @classmethod
    def from_record(cls, item: RecordItem) -> FalOutcome:
        """fal's record of a finished request (payload only when fal stored it)."""
        ended = item.ended_at
        if item.succeeded:
            if not item.has_output:
                return cls(Kind.NO_LORA, AnsweredBy.RECORD, has_payload=False, finished_at=ended)
            return cls._finished(AnsweredBy.RECORD, item.json_output, finished_at=ended)
        return cls._failed(
            AnsweredBy.RECORD,
            body=item.json_output,
            message=item.error_message,
            http_status=item.status_code,
            finished_at=ended,
        )
