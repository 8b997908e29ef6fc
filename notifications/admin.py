"""Staff pages for the outbox: every message, every attempt, resend, and the sender state.

Read-only: rows change only through delivery (and resend), so staff see what happened.
"""

from __future__ import annotations

from functools import partial

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from avatarsite import admin_base
from notifications import delivery, reachability
from notifications.messages import last_error_words, telegram_reason_words
from notifications.models import (
    ChatMigration,
    Notification,
    NotificationAttempt,
    NotificationStatus,
    PauseCause,
    ProgressMessage,
    SenderState,
    UnreachableChat,
)

# The staff roles' permission to resend a message: it lives on the avatar model, the
# one place every staff permission is declared (named here, never imported).
RESEND_PERMISSION = "monitoring.resend_notification"
_resend_action = partial(admin_base.staff_action, permission=RESEND_PERMISSION)


def warn_if_paused(request: HttpRequest) -> None:
    """The banner: sending is paused (the bot token is rejected, or the Bot API is down)."""
    paused = SenderState.objects.filter(pk=1, paused=True).first()
    if paused and paused.cause == PauseCause.OUTAGE:
        messages.warning(
            request,
            _(
                "Sending to Telegram is paused: the Bot API fails for every message "
                "(%(reason)s). Messages wait and are all sent as soon as a probe succeeds."
            )
            % {"reason": paused.reason},
        )
    elif paused:
        messages.error(
            request,
            _(
                "Sending to Telegram is paused: the bot token was rejected (%(reason)s). "
                "Fix TELEGRAM_BOT_TOKEN; sending resumes by itself once Telegram accepts it."
            )
            % {"reason": paused.reason},
        )


class NotificationAttemptInline(admin_base.ReadOnlyInline[NotificationAttempt, Notification]):
    model = NotificationAttempt
    fields = admin_base.attempt_fields("chat_id", "telegram_message_id")
    ordering = ("started_at", "id")


@admin.register(Notification)
class NotificationAdmin(admin_base.ReadOnlyAdmin[Notification]):
    list_display = (
        "id",
        "kind",
        "recipient",
        "status",
        "attempts",
        "created_at",
        "next_attempt_at",
        "sent_at",
        "maybe_duplicate",
    )
    list_filter = ("status", "kind", "audience", "maybe_duplicate")
    search_fields = ("dedup_key", "text", "owner__username", "=owner__telegram_id", "=avatar__id")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    inlines = [NotificationAttemptInline]
    actions = ["resend"]
    fields = readonly_fields = (
        "dedup_key",
        "kind",
        "audience",
        "owner",
        "avatar",
        "training",
        "chat_id",
        "as_sent",
        "text",
        "status",
        "attempts",
        "next_attempt_at",
        "lease_until",
        "claimed_by",
        "queued_at",
        "maybe_duplicate",
        "created_at",
        "sent_at",
        "telegram_message_id",
        "last_error_words",
        "context",
    )

    @admin.display(description=gettext_lazy("last error"))
    def last_error_words(self, obj: Notification) -> str:
        return last_error_words(obj.last_error)

    @admin.display(description=gettext_lazy("recipient"), ordering="owner")
    def recipient(self, obj: Notification) -> str:
        return str(obj.owner) if obj.owner_id else _("staff chat")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        warn_if_paused(request)
        return super().changelist_view(request, extra_context)

    def change_view(self, request: HttpRequest, object_id, form_url="", extra_context=None):
        warn_if_paused(request)
        notification = (
            Notification.objects.select_related("owner", "avatar").filter(pk=object_id).first()
        )
        extra = {"subtitle": self.headline(notification)} if notification else {}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    @staticmethod
    def headline(notification: Notification) -> str:
        """What the message is: "Avatar ready — @anna, avatar #12"."""
        kind = str(notification.get_kind_display())
        about = [str(notification.owner)] if notification.owner_id else []
        if notification.avatar is not None:
            about.append(
                _("%(name)s, avatar #%(id)s")
                % {"name": notification.avatar.name, "id": notification.avatar_id}
            )
        return f"{kind} — {', '.join(about)}" if about else kind

    @admin.display(description=gettext_lazy("as shown on Telegram"))
    def as_sent(self, obj: Notification) -> SafeString:
        # The text is our own HTML with every interpolated value escaped when it was
        # rendered (notifications.messages), the same markup Telegram displays.
        return format_html('<div class="telegram-text">{}</div>', mark_safe(obj.text))  # noqa: S308

    @_resend_action(description=gettext_lazy("Resend undelivered notifications…"))
    def resend(self, request: HttpRequest, queryset: QuerySet[Notification]):
        selected = list(queryset.select_related("owner", "avatar").order_by("pk"))
        if not admin_base.is_confirmed(request):
            return admin_base.confirmation_page(
                self,
                request,
                action="resend",
                title=_("Resend notifications"),
                question=_(
                    "Send these notifications again, each with a fresh set of retries? "
                    "Their recipients get the message once more."
                ),
                rows=admin_base.confirm_rows(
                    selected, self.headline, why_not_resend, Notification.get_status_display
                ),
            )
        resent = 0
        for row in selected:
            if not why_not_resend(row) and delivery.resend(row.pk):
                resent += 1
                self.log_change(request, row, "resend: queued to be sent again")
        if resent:
            self.message_user(
                request,
                ngettext(
                    "%(count)d notification queued to be sent again.",
                    "%(count)d notifications queued to be sent again.",
                    resent,
                )
                % {"count": resent},
                messages.SUCCESS,
            )
        left_alone = len(selected) - resent
        if left_alone:
            self.message_user(
                request,
                ngettext(
                    "%(count)d selected notification could not be resent: left alone.",
                    "%(count)d selected notifications could not be resent: left alone.",
                    left_alone,
                )
                % {"count": left_alone},
                messages.WARNING,
            )
        return None


def why_not_resend(notification: Notification) -> str:
    """Why resending ``notification`` would change nothing ("" when it is resent)."""
    if notification.status not in reachability.UNDELIVERED_STATUSES:
        return _("it is “%(status)s”; only undelivered messages are resent.") % {
            "status": notification.get_status_display()
        }
    if notification.status == NotificationStatus.UNREACHABLE and reachability.is_unreachable(
        notification.chat_id
    ):
        return _(
            "the owner is still marked unreachable: record that they are reachable again "
            "(Unreachable chats) and it is resent by itself."
        )
    return ""


@admin.register(SenderState)
class SenderStateAdmin(admin_base.ReadOnlyAdmin[SenderState]):
    list_display = ("__str__", "paused", "cause", "reason", "paused_at", "last_probe_at")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        warn_if_paused(request)
        return super().changelist_view(request, extra_context)


@admin.register(UnreachableChat)
class UnreachableChatAdmin(admin_base.ReadOnlyAdmin[UnreachableChat]):
    list_display = ("chat_id", "reason_words", "since")
    search_fields = ("=chat_id", "reason")
    actions = ["reachable_again"]

    @admin.display(description=gettext_lazy("why unreachable"), ordering="reason")
    def reason_words(self, obj: UnreachableChat) -> str:
        return telegram_reason_words(obj.reason)

    @_resend_action(description=gettext_lazy("The owner is reachable again: resend held messages…"))
    def reachable_again(self, request: HttpRequest, queryset: QuerySet[UnreachableChat]):
        chats = list(queryset.order_by("pk"))
        if not admin_base.is_confirmed(request):
            return admin_base.confirmation_page(
                self,
                request,
                action="reachable_again",
                title=_("The owner is reachable again"),
                question=_(
                    "Has the owner unblocked the bot (or written to it)? Messages to these "
                    "chats are sent again, and the messages held back about their avatars' "
                    "current trainings are resent once."
                ),
                rows=[
                    admin_base.ConfirmRow(chat, label=str(chat.chat_id), state=chat.reason)
                    for chat in chats
                ],
            )
        for chat in chats:
            resent = reachability.reachable_again(chat.chat_id, why=f"staff: {request.user}")
            text = ngettext(
                "chat %(chat)s is reachable again; %(count)d held message queued again.",
                "chat %(chat)s is reachable again; %(count)d held messages queued again.",
                len(resent),
            ) % {"chat": chat.chat_id, "count": len(resent)}
            # The row is gone: the admin log keeps who said so and when.
            self.log_change(request, chat, f"reachable_again: {text}")
            self.message_user(request, text, messages.SUCCESS)
        return None


@admin.register(ChatMigration)
class ChatMigrationAdmin(admin_base.ReadOnlyAdmin[ChatMigration]):
    list_display = ("old_chat_id", "new_chat_id", "migrated_at")


@admin.register(ProgressMessage)
class ProgressMessageAdmin(admin_base.ReadOnlyAdmin[ProgressMessage]):
    list_display = ("training", "chat_id", "state", "phase", "edits", "last_edit_at", "last_error")
    list_filter = ("state",)
    search_fields = ("=chat_id", "=training__fal_request_id")
    list_select_related = ("training",)
