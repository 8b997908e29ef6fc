"""fal's webhook endpoint: read, verify, store, process (the rest is on ``Delivery``)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from monitoring.fal import signature
from monitoring.fal.deliveries import Delivery
from monitoring.models import WebhookOutcome, WebhookVerdict

logger = logging.getLogger("monitoring")


@csrf_exempt  # fal signs its deliveries; it has no CSRF token to send
@transaction.non_atomic_requests  # the delivery's row must survive a processing error
def fal_webhook(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        error = {"error": "method not allowed, use POST"}
        return JsonResponse(error, status=405, headers={"Allow": "POST"})
    received_at = timezone.now()
    body, verified = b"", False
    try:
        body = signature.read_body(request, settings.WEBHOOK_MAX_BODY_BYTES)
        headers = signature.signed_headers(request)
        signature.verify(headers, body)
        verified = True
        data = signature.parse(body, headers[signature.REQUEST_ID_HEADER])
        outcome = Delivery.receive(request, body, data, received_at)
    except signature.Refused as refused:
        # Refused while reading: what was read, and the size as far as known.
        kept, size = (body, len(body)) if body else (refused.partial, refused.size)
        row = Delivery.from_request(
            request, kept, received_at=received_at, size=size, verified=verified
        )
        try:
            row.keep_refused(refused.verdict, refused.reason, WebhookOutcome.REJECTED)
        except Exception:
            logger.exception("a refused fal webhook could not be recorded")
        if refused.verdict == WebhookVerdict.UNVERIFIABLE:
            logger.error("fal webhook not verifiable: %s", refused.reason)
        return JsonResponse({"error": refused.reason}, status=refused.status)
    except Exception:
        # Most likely the database: nothing was stored, so fal must deliver again.
        logger.exception("fal webhook could not be recorded")
        return JsonResponse({"error": "internal error, please retry"}, status=500)
    if outcome == WebhookOutcome.FAILED:
        # Our own failure: 5xx, so that fal delivers again.
        return JsonResponse({"error": "processing failed, please retry"}, status=500)
    return JsonResponse({"outcome": outcome})
