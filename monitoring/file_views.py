"""Serving kept avatar files: the signed ``/files/...`` link (its own authorisation: fal
fetches it) and staff downloads; nginx sends the bytes when configured (docs/files.md)."""

from __future__ import annotations

import re
from urllib.parse import quote

from django.conf import settings
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_safe

from monitoring import files
from monitoring.models import KeptFile

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@require_safe
def serve(request: HttpRequest, token: str, filename: str) -> HttpResponseBase:
    row = files.file_for_token(token, filename)
    if row is None:
        raise Http404("No such file")
    return file_response(request, row)


def file_response(
    request: HttpRequest, row: KeptFile, *, attachment: bool = False
) -> HttpResponseBase:
    """The bytes of a kept file (or nginx's instruction to send them)."""
    etag = f'"{row.sha256}"'
    size = row.size or 0
    json = row.file_name.endswith(".json")
    content_type = "application/json" if json else "application/octet-stream"
    disposition = "attachment" if attachment else "inline"
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(row.file_name)}",
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304, headers=headers)
    accel = settings.AVATAR_FILES_X_ACCEL_REDIRECT
    if accel and files.is_filesystem():
        # nginx serves the file itself (Range included) from its internal location.
        headers["X-Accel-Redirect"] = accel.rstrip("/") + "/" + quote(row.name)
        return HttpResponse(content_type=content_type, headers=headers)
    start, end = 0, size - 1
    status = 200
    wanted = request.headers.get("Range", "")
    if wanted and request.headers.get("If-Range", etag) == etag:
        match = _RANGE.match(wanted.strip())
        first, last = match.groups() if match else ("", "")
        if first or last:
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:  # the last N bytes
                start, end = max(0, size - int(last)), size - 1
            if start >= size or start > end:
                return HttpResponse(
                    status=416, headers={**headers, "Content-Range": f"bytes */{size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        # Several ranges or a malformed header: the whole file (RFC 9110 allows it).
    body = files.read_range(row, start, end) if request.method != "HEAD" and size else iter(())
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    return StreamingHttpResponse(body, status=status, content_type=content_type, headers=headers)
