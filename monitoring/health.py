"""The health endpoint (built by the staff tools issue)."""

from django.http import JsonResponse


def healthz(request):
    return JsonResponse({"ok": True})
