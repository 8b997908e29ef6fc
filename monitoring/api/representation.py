"""The avatar as the API shows it: GET answers, POST answers and event bodies alike.

Ids are strings everywhere (Telegram ids included), so that no client parses a
64-bit id into a float. Nothing here is translated: codes and fal's own messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitoring import eta, files
from monitoring.api.models import ApiClient
from monitoring.models import Avatar, FalStatus, Training, TrainingOutcome


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def submit_state(training: Training) -> str:
    """What became of the submit: ``accepted``, ``refused`` or ``unknown``.

    Read from the training row only, so it holds whichever path later resolves a
    lost answer: "unknown" is an attempt that has no request id although its start
    call returned (it stays SUBMITTING, is looked up, never resubmitted).
    """
    if training.outcome == TrainingOutcome.REFUSED:
        return "refused"
    if not training.fal_request_id:
        return "unknown"
    return "accepted"


def training_data(training: Training, *, links: bool = True) -> dict[str, Any]:
    """``links=False``: the ``files`` URLs left out (what an event callback stores)."""
    submit = submit_state(training)
    return {
        "id": str(training.pk),
        "attempt": training.attempt,
        "endpoint": training.endpoint,
        "submit": submit,
        "submit_error": (
            {"type": training.error_type, "message": training.error_message}
            if submit == "refused"
            else None
        ),
        "fal_request_id": training.fal_request_id,
        "fal_status": training.fal_status,
        "queue_position": training.queue_position,
        "eta": eta.as_json(training),
        "outcome": training.outcome or None,
        "lora_url": training.lora_url,
        "config_url": training.config_url,
        "files": files.files_data(training, links=links),
        "error": training.error_message if training.outcome != TrainingOutcome.REFUSED else "",
        "error_type": training.error_type if training.outcome != TrainingOutcome.REFUSED else "",
        "stuck": training.is_stuck,
        "cancel_requested_at": _iso(training.cancel_requested_at),
        "created_at": _iso(training.created_at),
        "submitted_at": _iso(training.submitted_at),
        "finished_at": _iso(training.finished_at),
    }


def avatar_data(
    avatar: Avatar, trainings: list[Training] | None = None, *, links: bool = True
) -> dict[str, Any]:
    """The fields of ``check_avatar_db --json`` plus queue position and the attempts.

    ``avatar`` should come with ``owner`` and ``current_training`` loaded; ``trainings``
    (every attempt, oldest first) is read when not given.
    """
    training = avatar.current_training
    if trainings is None:
        trainings = list(avatar.trainings.order_by("attempt").prefetch_related("kept_files"))
    # The current attempt is one of them: its kept files are read once.
    training = next((t for t in trainings if training and t.pk == training.pk), training)
    active = training is not None and training.finished_at is None
    return {
        "id": str(avatar.pk),
        "name": avatar.name,
        "status": avatar.status,
        "training_type": avatar.training_type,
        "fal_status": training.fal_status if training else None,
        "fal_request_id": training.fal_request_id if training else None,
        "queue_position": (
            training.queue_position
            if active and training and training.fal_status == FalStatus.IN_QUEUE
            else None
        ),
        "eta": eta.as_json(training),
        "lora_url": training.lora_url if training else "",
        "config_url": training.config_url if training else "",
        "files": files.files_data(training, links=links) if training else None,
        "error": training.error_message if training else "",
        "error_type": training.error_type if training else "",
        "stuck": bool(training and training.is_stuck),
        "stuck_reason": training.stuck_reason if training and training.is_stuck else "",
        "owner_telegram_id": str(avatar.owner.telegram_id),
        "created_at": _iso(avatar.created_at),
        "finished_at": _iso(training.finished_at) if training else None,
        "trainings": [training_data(t, links=links) for t in trainings],
    }


def load_avatar(avatar_id: int, client: ApiClient | None = None) -> Avatar | None:
    """The avatar, or None; with ``client``, only one that client may see."""
    avatars = Avatar.objects.select_related("owner", "current_training").filter(pk=avatar_id)
    if client is not None:
        avatars = avatars.filter(client.avatar_filter())
    return avatars.first()
