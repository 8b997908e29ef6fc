"""``start_training``: start an existing avatar, or create owner + avatar and start it."""

from __future__ import annotations

import json

from django.core.management.base import CommandError
from django.utils.translation import gettext as _

from monitoring import transitions, wording
from monitoring.api import representation
from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.models import Avatar, AvatarStatus, EventSource, Language, TrainingType
from monitoring.trainings import (
    SUBMIT_UNKNOWN_DETAIL,
    SUBMIT_UNKNOWN_STATE,
    create_avatar_for_owner,
    start_training,
)


class Command(TranslatedCommand):
    help = (
        "Start an avatar's training on fal (--avatar ID), or create the owner and avatar "
        "and start it (--owner-telegram-id, --name, --images-url, --training-type, --trigger)."
    )

    json_help = "print only a JSON object on stdout"

    def add_arguments(self, parser):
        parser.add_argument(
            "--avatar", type=inputs.database_id, help="id of an existing avatar to start"
        )
        parser.add_argument(
            "--owner-telegram-id", type=inputs.telegram_id, help="a positive 64-bit integer"
        )
        parser.add_argument("--name", type=inputs.column(Avatar, "name"))
        parser.add_argument("--images-url", type=inputs.column(Avatar, "images_url"))
        parser.add_argument(
            "--training-type",
            choices=[c.value for c in TrainingType],
            default=TrainingType.PORTRAIT,
        )
        parser.add_argument(
            "--trigger",
            type=inputs.column(Avatar, "trigger_word"),
            help="trigger word (trigger_phrase for portraits)",
        )
        parser.add_argument("--owner-language", choices=[c.value for c in Language])

    def handle(self, *args, **options):
        avatar = self._avatar(options) if options["avatar"] else self._create(options)
        outcome = start_training(avatar, source=EventSource.COMMAND)
        training = outcome.training
        if not outcome.changed and not (training and training.fal_request_id):
            raise CommandError(
                _("Avatar %(id)s was not started: %(reason)s")
                % {"id": avatar.pk, "reason": outcome.detail or outcome.status}
            )
        avatar.refresh_from_db()
        request_id = training.fal_request_id if training else None
        if avatar.status != AvatarStatus.TRAINING:
            raise CommandError(
                _("Avatar %(id)s was not started: %(reason)s")
                % {"id": avatar.pk, "reason": outcome.detail or avatar.status}
            )
        lost = training is not None and not request_id and training.submit_unknown_since
        held = training is not None and training.is_held
        if options["json"]:
            answer = {"id": str(avatar.pk), "fal_request_id": request_id or ""}
            if training is not None and held:
                answer["submit"] = representation.submit_state(training)
                answer["held_reason"] = training.held_reason
            if lost:
                answer["state"] = SUBMIT_UNKNOWN_STATE
            return json.dumps(answer)
        if training is not None and (held or lost):
            # Not an error: a held start is sent by itself once fal's balance is back, and a
            # second start of a lost one could bill a second training.
            detail = wording.held_words(training.held_reason) if held else SUBMIT_UNKNOWN_DETAIL
            return _("Avatar %(id)s: %(detail)s") % {"id": avatar.pk, "detail": detail}
        message = _("Avatar %(id)s is training (fal request %(request)s)") % {
            "id": avatar.pk,
            "request": request_id or "-",
        }
        return message + (f": {outcome.detail}" if outcome.detail else "")

    def _avatar(self, options) -> Avatar:
        try:
            avatar = Avatar.objects.get(pk=options["avatar"])
        except Avatar.DoesNotExist:
            raise CommandError(_("No avatar with id %s") % options["avatar"]) from None
        if avatar.status == AvatarStatus.DRAFT:
            transitions.mark_ready(avatar, source=EventSource.COMMAND)
        if avatar.status != AvatarStatus.READY_FOR_TRAINING:
            raise CommandError(
                _(
                    "Avatar %(id)s cannot start: it is %(status)s (only draft or "
                    "ready_for_training avatars start; use retrain for failed ones)"
                )
                % {"id": avatar.pk, "status": avatar.status}
            )
        return avatar

    def _create(self, options) -> Avatar:
        missing = [
            f"--{name.replace('_', '-')}"
            for name in ("owner_telegram_id", "name", "images_url", "trigger")
            if not options.get(name)
        ]
        if missing:
            raise CommandError(
                _(
                    "Give --avatar ID, or all of --owner-telegram-id, --name, --images-url, "
                    "--trigger (missing: %s)"
                )
                % ", ".join(missing)
            )
        if not options["images_url"].startswith(("https://", "http://")):
            raise CommandError(_("--images-url must be an http(s) URL of a zip archive"))
        return create_avatar_for_owner(
            owner_telegram_id=options["owner_telegram_id"],
            owner_language=options["owner_language"],
            name=options["name"],
            training_type=options["training_type"],
            trigger_word=options["trigger"],
            images_url=options["images_url"],
            source=EventSource.COMMAND,
        )
