"""HTTP endpoints: fal's webhook and the health check. Thin: the logic lives elsewhere."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def fal_webhook(request):  # replaced by the webhooks issue
    return JsonResponse({"error": "not implemented"}, status=503)


def healthz(request):  # replaced by the staff tools issue
    return JsonResponse({"ok": True})
