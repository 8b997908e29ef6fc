"""fal's webhook endpoint. Thin: verification and processing live in monitoring.webhooks."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def fal_webhook(request):  # built by the webhooks issue
    return JsonResponse({"error": "not implemented"}, status=503)
