"""``check_fal_status``: fal's own answer about one request, known to us or not, beside what
we have recorded (for when staff doubt the monitor). Nothing is written."""

from __future__ import annotations

import dataclasses
import json
import re

from django.core.management.base import CommandError
from django.utils.translation import gettext as _

from monitoring.fal import client as fal
from monitoring.fal import payloads
from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.models import Training

# Anything else is a typo or a pasted URL: say so instead of asking fal about it.
REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
ENDPOINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Command(TranslatedCommand):
    help = _(
        "Print fal's raw status for a request id (and with --logs its logs, with --result its "
        "result). Works for requests this monitor does not know."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "request_id", type=inputs.text(64), help=_("fal's request id (a UUID).")
        )
        parser.add_argument(
            "--endpoint",
            type=inputs.text(200),
            help=_("fal endpoint as owner/app (default: the training's, or the portrait trainer)."),
        )
        parser.add_argument("--logs", action="store_true", help=_("Include fal's logs."))
        parser.add_argument(
            "--result", action="store_true", help=_("Also fetch the result once completed.")
        )

    def handle(
        self, *args, request_id: str, endpoint: str | None, logs: bool, result: bool, **options
    ) -> str | None:
        if not REQUEST_ID.match(request_id):
            raise CommandError(
                _(
                    "%(id)r is not a fal request id: expected a UUID such as "
                    "764cabcf-b745-4b3e-ae38-1200304cf45b"
                )
                % {"id": request_id}
            )
        training = (
            Training.objects.select_related("avatar").filter(fal_request_id=request_id).first()
        )
        if endpoint is not None and not ENDPOINT.match(endpoint):
            raise CommandError(
                _("%(endpoint)r is not a fal endpoint: expected owner/app, e.g. %(example)s")
                % {"endpoint": endpoint, "example": payloads.DEFAULT_ENDPOINT}
            )
        endpoint = endpoint or (training.endpoint if training else payloads.DEFAULT_ENDPOINT)

        if training:
            self.stdout.write(
                _(
                    "Known here: avatar %(avatar)s, attempt %(attempt)s, avatar status %(status)s, "
                    "recorded fal status %(fal)s"
                )
                % {
                    "avatar": training.avatar_id,
                    "attempt": training.attempt,
                    "status": training.avatar.status,
                    "fal": training.fal_status,
                }
            )
        else:
            self.stdout.write(
                _("Not a request of this monitor; asking fal at %(endpoint)s.")
                % {"endpoint": endpoint}
            )

        try:
            report = fal.status(endpoint, request_id, with_logs=logs)
        except fal.FalNotFound:
            raise CommandError(
                _("fal does not know request %(id)s at %(endpoint)s (404)")
                % {"id": request_id, "endpoint": endpoint}
            ) from None
        except fal.FalAuthError as exc:
            raise CommandError(
                _("fal rejected our key (%(code)s): %(detail)s")
                % {"code": exc.status_code, "detail": exc.detail}
            ) from None
        except fal.FalError as exc:
            raise CommandError(_("fal did not answer: %(error)s") % {"error": exc}) from None

        status = dataclasses.asdict(report)
        if not logs:
            del status["logs"]
        self.stdout.write(json.dumps({"status": status}, indent=2, ensure_ascii=False, default=str))

        if not result:
            return None
        if report.status != "COMPLETED":
            return _("No result yet: the request is %(status)s.") % {"status": report.status}
        try:
            payload = fal.result(endpoint, request_id)
        except fal.FalJobFailed as exc:
            # fal answers a failed job's result with an HTTP error: that is the answer.
            return _("No result: the job failed on fal (%(type)s): %(error)s") % {
                "type": exc.error_type or report.error_type or "-",
                "error": report.error or exc,
            }
        except fal.FalError as exc:
            raise CommandError(
                _("fal did not answer the result fetch: %(error)s") % {"error": exc}
            ) from None
        return json.dumps({"result": payload}, indent=2, ensure_ascii=False, default=str)
