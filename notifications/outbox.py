"""Writing messages into the outbox (the one-off staff alerts' texts too: Russian, every
value escaped), and queueing their delivery.

Called inside the transaction that wins a status change, so the message exists if and
only if the change does; the unique ``dedup_key`` makes a second row impossible.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from html import escape
from typing import Any

from django.conf import settings
from django.db import IntegrityError, router, transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.tasks import async_task

from avatarsite.log_redaction import redact
from notifications import messages
from notifications.models import (
    Audience,
    Notification,
    NotificationKind,
    NotificationStatus,
    OwnerMessage,
    SenderState,
)

logger = logging.getLogger("notifications")

TASK = "notifications.delivery.deliver"

_OUTCOME_KINDS = {
    "completed": NotificationKind.READY,
    "error": NotificationKind.FAILED,
    "cancelled": NotificationKind.CANCELLED,
}


def _create_once(*, savepoint: bool = True, **fields) -> Notification | None:
    """Insert unless the dedup key exists, and hand a row due now to the sender (one held
    back, or written while paused, is the relay's). ``savepoint=False`` (for the only
    possible writer of a key) saves two round trips."""
    now = timezone.now()
    due_now = (
        fields.setdefault("next_attempt_at", now) <= now
        and not SenderState.objects.filter(pk=1, paused=True).exists()
    )
    if due_now:
        fields["queued_at"] = now
    if savepoint:
        try:
            with transaction.atomic():
                notification = Notification.objects.create(**fields)
        except IntegrityError:
            logger.info("Notification %s already exists: not written twice", fields["dedup_key"])
            return None
    else:
        notification = Notification.objects.create(**fields)
    if due_now:
        _hand_over(notification.pk)
    return notification


def _hand_over(notification_id: int) -> None:
    """Queue the row's delivery so that it runs only once the row is committed."""
    alias = router.db_for_write(Notification)
    if Conf.ORM == alias and not transaction.get_autocommit(using=alias):
        # The task queue is a table here: its row joins the message's transaction (both
        # commit or neither, no commit of its own; a failure here is the database's).
        queue_task(notification_id)
    else:
        transaction.on_commit(lambda: enqueue(notification_id))


# The context key of an owner's outcome message that says when fal finished the job.
FAL_FINISHED_AT = "fal_finished_at"


def queue_outcome(
    *, training: Any, outcome: str, fal_finished_at: datetime | None = None
) -> Notification | None:
    """The owner's message for a finished attempt, picked by its ``owner_message`` ("no
    message" writes it as skipped). ``fal_finished_at``: to measure how long they waited."""
    owner_message = getattr(training, "owner_message", "") or ""
    kind = _OUTCOME_KINDS[outcome]
    if outcome == "error" and owner_message == OwnerMessage.CANCELLED:
        kind = NotificationKind.CANCELLED  # the owner is told "we cancelled it"
    context: dict[str, Any] = {"owner_message": owner_message} if owner_message else {}
    if fal_finished_at is not None:
        context[FAL_FINISHED_AT] = fal_finished_at.isoformat()
    fields = _to_owner(kind, training, dedup_key=f"{kind}:{training.pk}", context=context)
    if owner_message == OwnerMessage.NONE:
        fields["status"] = NotificationStatus.SKIPPED
        fields["context"] = {**context, "skipped": "staff_chose_no_message"}
        return Notification.objects.create(**fields)
    # The winner of the transition is the only writer of this key: no savepoint.
    return _create_once(savepoint=False, **fields)


def delayed_key(avatar_id: int, episode_start_id: int) -> str:
    return f"delayed:{avatar_id}:{episode_start_id}"


def queue_delayed(*, training: Any, episode_start_id: int) -> Notification | None:
    """The owner's one "taking longer than usual" message per episode (attempt and retries)."""
    key = delayed_key(training.avatar.pk, episode_start_id)
    return _create_once(**_to_owner(NotificationKind.DELAYED, training, dedup_key=key))


def _to_owner(kind: str, training: Any, **fields: Any) -> dict[str, Any]:
    avatar = training.avatar
    return {
        "kind": kind,
        "audience": Audience.OWNER,
        "owner": avatar.owner,
        "avatar": avatar,
        "training": training,
        "chat_id": avatar.owner.telegram_id,
        "text": messages.render_owner_message(kind, training),
        **fields,
    }


def queue_stuck(*, training: Any, episode: int, reason: str = "") -> Notification | None:
    """One staff alert per stuck episode, held back a few seconds so that a check run
    flagging many trainings at once ends up as one digest (``merge_stuck_alerts``)."""
    hold = timedelta(seconds=settings.NOTIFICATION_STUCK_HOLD_SECONDS)
    return _alert(
        NotificationKind.STUCK,
        f"stuck:{training.avatar_id}:{training.pk}:{episode}",
        messages.render_stuck_message(training, reason),
        avatar=training.avatar,
        training=training,
        context={"episode": episode, **({"reason": reason} if reason else {})},
        next_attempt_at=timezone.now() + hold,
    )


def merge_stuck_alerts() -> Notification | None:
    """Many pending stuck alerts → one digest; the merged rows say where they went. Rows
    being sent are locked or no longer pending: an alert goes alone or in one digest."""
    with transaction.atomic():
        ids = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(kind=NotificationKind.STUCK, status=NotificationStatus.PENDING, attempts=0)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if len(ids) < settings.NOTIFICATION_STUCK_DIGEST_MIN:
            return None
        ordered = [
            (row.training, str(row.context.get("reason") or ""))
            for row in Notification.objects.filter(pk__in=ids)
            .select_related("training__avatar")
            .order_by("pk")
            if row.training is not None
        ]
        digest = Notification.objects.create(
            dedup_key=f"stuck_digest:{ids[0]}-{ids[-1]}:{len(ids)}",
            kind=NotificationKind.STUCK_DIGEST,
            audience=Audience.STAFF,
            text=messages.render_stuck_digest(ordered),
            context={"merged": ids},
            queued_at=timezone.now(),
        )
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.PENDING).update(
            status=NotificationStatus.MERGED,
            context={"merged_into": digest.pk},
            last_error="",
        )
        _hand_over(digest.pk)
    logger.info("%s stuck alerts merged into digest notification %s", len(ids), digest.pk)
    return digest


def queue_given_up(notification: Notification, error: str) -> Notification | None:
    """Staff alert: an owner's message (never a staff one) given up, or rejected by Telegram."""
    if notification.audience != Audience.OWNER:
        return None
    return _alert(
        NotificationKind.GIVEN_UP,
        f"given_up:{notification.pk}:{notification.attempt_log.count()}",
        messages.render_given_up_message(notification, error),
        owner=notification.owner,
        avatar=notification.avatar,
        training=notification.training,
        context={"notification": notification.pk},
    )


def queue_fal_account_alert(*, status_code: int, detail: str) -> Notification | None:
    """Staff alert: fal rejected our key (401) or locked the account (403); one an hour."""
    detail = redact(detail)  # fal echoes request details; never forward the key
    what = "ключ fal отклонён" if status_code == 401 else "аккаунт fal заблокирован (баланс?)"
    return _alert(
        NotificationKind.FAL_ACCOUNT,
        f"fal_account:{status_code}:{timezone.now():%Y%m%d%H}",
        f"🚨 fal ответил {status_code}: {what}.\n<code>{escape(detail[:500])}</code>",
        context={"status_code": status_code},
    )


def queue_fal_balance_alert(*, since: datetime, text: str, context: dict) -> Notification | None:
    """Staff alert: fal's balance is low, or fal locked the account; one per episode."""
    return _alert(
        NotificationKind.FAL_ACCOUNT,
        f"fal_balance:{since.isoformat()}",
        text[: messages.MAX_TEXT],
        context=context,
    )


def queue_fal_record_alert(
    *, dedup_key: str, text: str, training=None, context: dict | None = None
) -> Notification | None:
    """Staff alert about fal's own record (a double submit, a lost submit given up,
    requests billed that nobody follows)."""
    return _written_alert(
        NotificationKind.FAL_RECORD,
        dedup_key,
        text,
        context,
        avatar_id=training.avatar_id if training else None,
        training_id=training.pk if training else None,
    )


def _alert(kind: str, dedup_key: str, text: str, **fields) -> Notification | None:
    return _create_once(
        dedup_key=dedup_key, kind=kind, audience=Audience.STAFF, text=text, **fields
    )


def _written_alert(kind: str, dedup_key: str, text: str, context, **fields):
    """A staff alert whose text (Telegram HTML) and key the caller chose, linked to the avatar."""
    return _alert(
        kind,
        dedup_key[:200],
        (text + messages.avatar_link_line(fields["avatar_id"]))[: messages.MAX_TEXT],
        context=context or {},
        **fields,
    )


def queue_unsafe_result_alert(
    *, training_id: int, avatar_id: int, avatar_name: str, request_id: str, url: str
) -> Notification | None:
    """Staff alert: fal's result URL was not https, so the training was failed."""
    return _alert(
        NotificationKind.UNSAFE_RESULT,
        f"unsafe_result:{training_id}",
        (
            f"🚫 Обучение {messages.avatar_ref(avatar_id)} <b>{escape(avatar_name)}</b> "
            f"(<code>{escape(request_id or '—')}</code>) завершено с ошибкой: fal вернул "
            f"небезопасную ссылку на результат.\n<code>{escape(url[:500])}</code>"
            f"{messages.avatar_link_line(avatar_id)}"
        )[: messages.MAX_TEXT],
        avatar_id=avatar_id,
        training_id=training_id,
        context={"url": url[:2048]},
    )


def queue_files_alert(
    *, dedup_key: str, text: str, avatar_id: int, training_id: int, context: dict | None = None
) -> Notification | None:
    """Staff alert: an avatar's files could not be kept (too large, gone at fal, given up)."""
    return _written_alert(
        NotificationKind.FILES,
        dedup_key,
        text,
        context,
        avatar_id=avatar_id,
        training_id=training_id,
    )


def queue_fal_outage_alert(*, since: datetime, failed: int, calls: int) -> Notification | None:
    """Staff alert: fal fails for everyone. One per episode (keyed by when it began)."""
    return _alert(
        NotificationKind.FAL_OUTAGE,
        f"fal_outage:{since.isoformat()}",
        f"🌩 fal не отвечает: {failed} из {calls} проверок статуса не удались "
        f"(с {since:%H:%M:%S} UTC). Проверяем выборку обучений раз в интервал, пока fal "
        "не ответит; ни один аватар из-за этого не помечен ошибкой.",
        context={"since": since.isoformat(), "failed": failed, "calls": calls},
    )


def queue_retries_alert(*, now: datetime, retried: int, ended: int) -> Notification | None:
    """Staff alert: many attempts retried after fal's failures; none while the last is
    under an hour old (the share's window), one per clock hour when two retries race."""
    if Notification.objects.filter(
        kind=NotificationKind.RETRIES, created_at__gte=now - timedelta(hours=1)
    ).exists():
        return None
    return _alert(
        NotificationKind.RETRIES,
        f"retries:{now:%Y-%m-%dT%H}",
        f"🔁 У fal плохой день: {retried} из {ended} попыток обучения за час до "
        f"{now:%H:%M} UTC перезапущены автоматически после сбоев fal. Владельцы ничего "
        "не получают, пока попытки не кончатся; повторы видны на дашборде.",
        context={"retried": retried, "ended": ended},
    )


# --- The queue (here, not in ``delivery``: writing a row and queueing its task go together)


def queue_task(notification_id: int) -> None:
    """Put ``deliver(notification_id)`` on the notifications cluster's queue; may raise."""
    async_task(TASK, notification_id, cluster=settings.NOTIFICATION_CLUSTER, group="notifications")


def enqueue(notification_id: int) -> None:
    """Queue ``deliver(notification_id)``; never raises (a lost one is the relay's)."""
    try:
        queue_task(notification_id)
    except Exception:
        unqueue(notification_id)
        logger.exception(
            "Could not enqueue notification %s; the relay will send it", notification_id
        )


def unqueue(notification_id: int) -> None:
    """The row's task has run (or never made it to the queue): it has none waiting."""
    Notification.objects.filter(pk=notification_id, queued_at__isnull=False).update(queued_at=None)
