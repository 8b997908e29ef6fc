"""fal's webhook endpoint. Thin: verification and processing live in monitoring.fal.webhooks."""

from __future__ import annotations

import logging

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from monitoring.fal import webhooks

logger = logging.getLogger("monitoring")


@csrf_exempt  # fal signs its deliveries; it has no CSRF token to send
@transaction.non_atomic_requests  # the delivery record must survive a processing error
def fal_webhook(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        response = JsonResponse({"error": "method not allowed, use POST"}, status=405)
        response["Allow"] = "POST"
        return response
    try:
        answer = webhooks.receive(request)
    except Exception:
        # Most likely the database: nothing was stored, so fal must deliver again.
        logger.exception("fal webhook could not be recorded")
        return JsonResponse({"error": "internal error, please retry"}, status=500)
    return JsonResponse(answer.body, status=answer.status)
