"""Keep the trained files: fal's CDN deletes them, so a copy goes to our storage.

Each completion writes pending ``KeptFile`` rows in its transaction; ``keep`` copies,
checks size and SHA-256, and ``sweep`` retries. See docs/files.md.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from html import escape
from typing import Any
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.urls import reverse
from django.utils import timezone

from avatarsite.log_redaction import redact
from monitoring.fal import payloads
from monitoring.models import FileKind, FileState, KeptFile, Training, TrainingOutcome
from notifications import outbox

logger = logging.getLogger("monitoring")

CHUNK = 1024 * 1024
# 64 KiB at a time: with 1 MiB writes the kernel's dirty-page throttling stalled the
# socket and a copy to disk ran at half curl's speed (bench/keep_files.py).
DOWNLOAD_CHUNK = 64 * 1024
TEMP_DIR = "tmp"
MAX_REDIRECTS = 3
_REQUEST_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "avatar-training-monitor/1"}
# The first retry within about a minute (the sweep's), then doubling up to an hour.
RETRY_FIRST_SECONDS = 20.0
RETRY_MAX_SECONDS = 3600.0
_SIGNING_SALT = "monitoring.files.link"
# kind -> (fal's output key, the file name when fal's is unusable)
_KINDS: dict[str, tuple[str, str]] = {
    FileKind.LORA: ("diffusers_lora_file", "lora.safetensors"),
    FileKind.CONFIG: ("config_file", "config.json"),
}


def storage() -> Storage:
    return storages["avatar_files"]


def is_filesystem(store: Storage | None = None) -> bool:
    return isinstance(store or storage(), FileSystemStorage)


def _sources(training: Training) -> dict[str, tuple[str, str, int | None]]:
    """kind -> (url, file name, fal's file_size) of what the training produced."""
    result = training.result if isinstance(training.result, dict) else {}
    found: dict[str, tuple[str, str, int | None]] = {}
    for kind, url in ((FileKind.LORA, training.lora_url), (FileKind.CONFIG, training.config_url)):
        if not url:
            continue
        fal_key, fallback = _KINDS[kind]
        described = result.get(fal_key)
        described = described if isinstance(described, dict) else {}
        size = described.get("file_size") if described.get("url") == url else None
        name = str(described.get("file_name") or urlsplit(url).path).rsplit("/", 1)[-1]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._")[:100]
        found[kind] = (url, name or fallback, size if isinstance(size, int) and size >= 0 else None)
    return found


def plan(training: Training, *, now=None) -> int:
    """Create ``training``'s missing file rows as pending; how many files it has."""
    now = now or timezone.now()
    until = now + timedelta(hours=settings.AVATAR_FILES_RETRY_HOURS)
    wanted = [
        KeptFile(
            training=training,
            kind=kind,
            source_url=url,
            file_name=name,
            expected_size=size,
            next_attempt_at=now,
            retry_until=until,
            created_at=now,
        )
        for kind, (url, name, size) in _sources(training).items()
    ]
    # Rows already planned (a second completion path, the backfill) stay as they are.
    KeptFile.objects.bulk_create(wanted, ignore_conflicts=True)
    return len(wanted)


def on_training_finished(sender: Any, *, training: Training, outcome: str, **kwargs: Any) -> None:
    """Receiver of ``transitions.training_finished``: plan now, queue the copy on commit."""
    if outcome != "completed":
        return
    try:
        # A savepoint: a failure here must never undo the completion (plan it later).
        with transaction.atomic():
            planned = plan(training)
    except Exception:
        logger.exception("Could not plan keeping the files of training %s", training.pk)
        return
    if planned and settings.AVATAR_FILES_COPY:
        transaction.on_commit(lambda: enqueue(training.pk))


def enqueue(training_id: int) -> None:
    """Queue ``keep(training_id)``; never raises (the sweep is the net)."""
    try:
        from django_q.tasks import async_task

        async_task("monitoring.files.keep", training_id, group="avatar-files")
    except Exception:
        logger.exception("Could not queue keeping the files of training %s", training_id)


class CopyFailed(Exception):
    """One attempt failed; one with a ``failure`` (why) is never retried."""

    def __init__(self, message: str, failure: str = ""):
        super().__init__(message)
        self.failure = failure


def _claim(row_id: int, *, due_only: bool = True) -> KeptFile | None:
    """Take the row for one attempt (conditional UPDATE): another worker's lease wins."""
    now = timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    rows = KeptFile.objects.filter(free, pk=row_id, state=FileState.PENDING)
    if due_only:
        rows = rows.filter(next_attempt_at__lte=now)
    # The attempt counts from here: a task the worker kills (its timeout) still moves the
    # row towards giving up, and its lease running out lets the sweep retry it.
    lease = settings.AVATAR_FILE_DOWNLOAD_SECONDS + 2 * settings.AVATAR_FILE_TIMEOUT_SECONDS + 30
    if not rows.update(lease_until=now + timedelta(seconds=lease), attempts=F("attempts") + 1):
        return None
    return KeptFile.objects.select_related("training__avatar").get(pk=row_id)


def keep(training_id: int, *, due_only: bool = True) -> dict[str, str]:
    """Try once to copy each pending file of one training; kind -> new state or "busy". The
    task does nothing while AVATAR_FILES_COPY is off; the backfill (not ``due_only``) does."""
    if due_only and not settings.AVATAR_FILES_COPY:
        return {}
    outcome: dict[str, str] = {}
    ids = KeptFile.objects.filter(training_id=training_id, state=FileState.PENDING).values_list(
        "pk", "kind"
    )
    for row_id, kind in ids:
        row = _claim(row_id, due_only=due_only)
        outcome[kind] = attempt(row) if row is not None else "busy"
    return outcome


def attempt(row: KeptFile) -> str:
    """One copy of a claimed row; records the result and returns the row's new state."""
    tmp = f"{TEMP_DIR}/{uuid.uuid4().hex}.part"
    # One name per training and kind, so a second copy overwrites.
    final = f"avatars/{row.training.avatar_id}/{row.training_id}/{row.kind}/{row.file_name}"
    store = storage()
    try:
        size, sha256 = _download(row, store, tmp)
        _promote(store, tmp, final)
    except Exception as exc:
        try:
            store.delete(tmp)
        except Exception:
            logger.warning("Could not delete the temporary file %s", tmp, exc_info=True)
        if not isinstance(exc, CopyFailed):  # storage trouble, a bug: retried, never lost
            logger.exception("Keeping file %s of training %s failed", row.kind, row.training_id)
            exc = CopyFailed(f"{type(exc).__name__}: {redact(str(exc))[:1000]}")
        return _failed(row, exc)
    KeptFile.objects.filter(pk=row.pk, state=FileState.PENDING).update(
        state=FileState.KEPT,
        name=final,
        size=size,
        sha256=sha256,
        kept_at=timezone.now(),
        lease_until=None,
        last_error="",
    )
    logger.info(
        "Файл %s аватара %s сохранён (%s байт, sha256=%s)",
        row.kind,
        row.training.avatar_id,
        size,
        sha256,
        extra={"avatar_id": row.training.avatar_id, "request_id": row.training.fal_request_id},
    )
    return FileState.KEPT


def _get(url: str) -> http.client.HTTPResponse:
    """GET ``url`` (headers read), following redirects on the same host only. Plain
    ``http.client``: ``readinto`` a reused buffer streams cheapest (bench/keep_files.py)."""
    import certifi

    timeout = settings.AVATAR_FILE_TIMEOUT_SECONDS
    host = urlsplit(url).hostname
    # The same trust as our other clients: SSL_CERT_FILE when set, else certifi's roots.
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
    for _hop in range(MAX_REDIRECTS + 1):
        if payloads.check_media_url(url) != payloads.MediaUrl.ALLOWED:
            raise CopyFailed(
                "URL refused: not https on a host of FAL_MEDIA_ALLOWED_HOSTS",
                failure=KeptFile.Failure.UNSAFE_URL,
            )
        parts = urlsplit(url)
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, timeout=timeout, context=context
        )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("GET", target, headers=_REQUEST_HEADERS)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise CopyFailed(f"could not reach fal's CDN: {type(exc).__name__}") from exc
        if response.status in (301, 302, 303, 307, 308):
            location = urljoin(url, response.getheader("location") or "")
            connection.close()
            if (other := urlsplit(location).hostname) != host:
                raise CopyFailed(f"redirect to another host refused ({other})")
            url = location
            continue
        return response
    raise CopyFailed("too many redirects")


def _too_large(size: int) -> CopyFailed:
    return CopyFailed(
        f"{size} bytes is more than AVATAR_FILE_MAX_BYTES ({settings.AVATAR_FILE_MAX_BYTES})",
        failure=KeptFile.Failure.TOO_LARGE,
    )


def _download(row: KeptFile, store: Storage, tmp: str) -> tuple[int, str]:
    """Stream fal's file into ``tmp``, checking every limit; the bytes' size and SHA-256."""
    limit = settings.AVATAR_FILE_MAX_BYTES
    if row.expected_size is not None and row.expected_size > limit:
        raise _too_large(row.expected_size)
    deadline = time.monotonic() + settings.AVATAR_FILE_DOWNLOAD_SECONDS
    response = _get(row.source_url)
    try:
        code = response.status
        if code in (403, 404, 410):
            raise CopyFailed(f"fal answered {code}: the file is gone", KeptFile.Failure.GONE)
        if code != 200:
            raise CopyFailed(f"fal's CDN answered {code}")
        length_header = response.getheader("content-length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if length is not None and length > limit:
            raise _too_large(length)
        digest = hashlib.sha256()
        size = 0
        buffer = memoryview(bytearray(DOWNLOAD_CHUNK))
        try:
            with _writer(store, tmp) as write:
                while True:
                    count = response.readinto(buffer)
                    if not count:
                        break
                    size += count
                    if size > limit:
                        raise _too_large(size)
                    if time.monotonic() > deadline:
                        raise CopyFailed(
                            "download took longer than AVATAR_FILE_DOWNLOAD_SECONDS "
                            f"({size} bytes so far)"
                        )
                    piece = buffer[:count]
                    digest.update(piece)
                    write(piece)
        except (OSError, http.client.HTTPException) as exc:
            raise CopyFailed(f"download cut after {size} bytes: {type(exc).__name__}") from exc
    finally:
        response.close()
    if length is not None and size != length:
        raise CopyFailed(f"got {size} bytes, Content-Length said {length}")
    if row.expected_size is not None and size != row.expected_size:
        raise CopyFailed(f"got {size} bytes, fal's file_size said {row.expected_size}")
    return size, digest.hexdigest()


@contextmanager
def _writer(store: Storage, name: str) -> Iterator[Callable[[memoryview], Any]]:
    """Write a file under its temporary name, on either storage, in constant memory."""
    if isinstance(store, FileSystemStorage):
        path = store.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Unbuffered: the 64 KiB pieces go straight to the kernel, no second copy.
        with open(path, "wb", buffering=0) as file:

            def write(data: memoryview) -> None:
                while data:  # an unbuffered file may take fewer bytes than given
                    data = data[file.write(data) :]

            yield write
        return
    # django-storages' S3 file uploads a part every 5 MB (a multipart upload).
    s3_file: Any = store.open(name, "wb")
    try:
        # The caller reuses its buffer: the S3 file keeps what it is given, so a copy.
        yield lambda data: s3_file.write(bytes(data))
    except BaseException:
        if getattr(s3_file, "_multipart", None) is not None:
            # No object left: closing a file "not dirty" aborts its multipart upload.
            s3_file._is_dirty = False
        raise
    finally:
        s3_file.close()


def _promote(store: Storage, tmp: str, final: str) -> None:
    """Give the verified bytes their final name (replacing any earlier copy of the same)."""
    if isinstance(store, FileSystemStorage):
        target = store.path(final)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(store.path(tmp), target)
        return
    # S3: a server-side copy (multipart for large objects), then the temporary goes.
    bucket = store.bucket  # type: ignore[attr-defined]
    key = store._normalize_name(tmp)  # type: ignore[attr-defined]
    bucket.Object(store._normalize_name(final)).copy(  # type: ignore[attr-defined]
        {"Bucket": bucket.name, "Key": key}
    )
    store.delete(tmp)


def _backoff(attempts: int) -> float:
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, attempts - 1))


def _failed(row: KeptFile, exc: CopyFailed) -> str:
    error = str(exc)[:2000]
    wait = _backoff(row.attempts)
    next_at = timezone.now() + timedelta(seconds=wait)
    failure = exc.failure or (KeptFile.Failure.GAVE_UP if next_at > row.retry_until else "")
    pending = KeptFile.objects.filter(pk=row.pk, state=FileState.PENDING)
    kind, avatar_id = row.kind, row.training.avatar_id
    if failure:
        if pending.update(
            state=FileState.FAILED, failure=failure, lease_until=None, last_error=error
        ):
            _alert(row, failure, error)
        logger.warning("Файл %s аватара %s не сохранён (%s): %s", kind, avatar_id, failure, error)
        return FileState.FAILED
    pending.update(next_attempt_at=next_at, lease_until=None, last_error=error)
    logger.info(
        "Файл %s аватара %s: попытка %s не удалась (%s), следующая через %.0f с",
        kind,
        avatar_id,
        row.attempts,
        error,
        wait,
    )
    return FileState.PENDING


_WHAT_TO_DO: dict[str, tuple[str, str]] = {
    KeptFile.Failure.TOO_LARGE: (
        "файл больше AVATAR_FILE_MAX_BYTES",
        "проверьте файл на fal; если он нужен, поднимите AVATAR_FILE_MAX_BYTES и запустите "
        "<code>manage.py keep_avatar_files --avatar {avatar_id}</code>.",
    ),
    KeptFile.Failure.GONE: (
        "fal больше не хранит файл",
        "копию уже не сделать: у аватара только ссылка fal, которая не работает. "
        "Предложите владельцу переобучить аватар.",
    ),
    KeptFile.Failure.UNSAFE_URL: (
        "ссылка fal не https или не на хосте из FAL_MEDIA_ALLOWED_HOSTS",
        "проверьте результат обучения в админке; ничего не скачивалось.",
    ),
    KeptFile.Failure.GAVE_UP: (
        "копия не сделана за AVATAR_FILES_RETRY_HOURS",
        "проверьте хранилище и доступ к fal, затем запустите "
        "<code>manage.py keep_avatar_files --avatar {avatar_id}</code>.",
    ),
}


def _alert(row: KeptFile, failure: str, error: str) -> None:
    """One staff alert per training and reason, through the notifications outbox."""
    training = row.training
    avatar = training.avatar
    what, todo = _WHAT_TO_DO[failure]
    text = (
        f"🗄 Файлы аватара #{avatar.pk} <b>{escape(avatar.name)}</b> "
        f"(<code>{escape(training.fal_request_id or '—')}</code>) не сохранены: {what} "
        f"({escape(row.get_kind_display())}).\n<code>{escape(error[:300])}</code>\n"
        f"Что делать: {todo.format(avatar_id=avatar.pk)}"
    )
    outbox.queue_files_alert(
        dedup_key=f"files:{failure}:{training.pk}",
        text=text,
        avatar_id=avatar.pk,
        training_id=training.pk,
        context={"failure": failure, "kind": row.kind},
    )


def sweep(limit: int = 200) -> int:
    """Every minute: queue trainings with a file due; give up rows whose task never returned."""
    if not settings.AVATAR_FILES_COPY:
        return 0
    now = timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    overdue = KeptFile.objects.filter(
        free, state=FileState.PENDING, retry_until__lt=now, attempts__gt=0
    ).select_related("training__avatar")
    for row in overdue[:limit]:
        error = row.last_error or "the copy never finished (killed by the worker's timeout?)"
        gave_up = KeptFile.objects.filter(free, pk=row.pk, state=FileState.PENDING).update(
            state=FileState.FAILED, failure=KeptFile.Failure.GAVE_UP, last_error=error
        )
        if gave_up:
            _alert(row, KeptFile.Failure.GAVE_UP, error)
    training_ids = list(
        KeptFile.objects.filter(free, state=FileState.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("training_id", flat=True)
        .distinct()[:limit]
    )
    for training_id in dict.fromkeys(training_ids):
        enqueue(training_id)
    return len(training_ids)


def retry_now(training: Training) -> None:
    """The backfill: what is not kept is pending again, due now, with a new window."""
    now = timezone.now()
    plan(training, now=now)
    KeptFile.objects.filter(training=training).exclude(state=FileState.KEPT).update(
        state=FileState.PENDING,
        failure="",
        attempts=0,
        next_attempt_at=now,
        retry_until=now + timedelta(hours=settings.AVATAR_FILES_RETRY_HOURS),
        lease_until=None,
    )


def link(row: KeptFile, *, now=None) -> str:
    """A URL anyone (fal too) can fetch the kept file from until it expires: presigned on
    S3, else our signed ``/files/<token>/<name>``. A secret: never logged nor stored."""
    store = storage()
    max_age = settings.AVATAR_FILE_URL_MAX_AGE_SECONDS
    if not is_filesystem(store):
        return store.url(row.name, expire=max_age)  # type: ignore[call-arg]
    token = signing.dumps(
        {
            "f": row.pk,
            "h": row.sha256[:16],
            "e": int((now or timezone.now()).timestamp()) + max_age,
        },
        salt=_SIGNING_SALT,
        compress=True,
    )
    path = reverse("avatar-file", kwargs={"token": token, "filename": row.file_name})
    return (settings.PUBLIC_BASE_URL or "").rstrip("/") + path


def file_for_token(token: str, filename: str) -> KeptFile | None:
    """The kept file a signed link names, or None (bad, expired, or no longer there)."""
    try:
        data = signing.loads(token, salt=_SIGNING_SALT)
    except signing.BadSignature:
        return None
    # Only ``link`` signs with this salt: the token holds what it put there.
    if data["e"] < int(timezone.now().timestamp()):
        return None
    row = KeptFile.objects.filter(pk=data["f"], state=FileState.KEPT).first()
    if row is None or row.sha256[:16] != data["h"] or row.file_name != filename:
        return None
    return row


def _file_data(row: KeptFile | None, *, links: bool) -> dict[str, Any] | None:
    if row is None or row.state != FileState.KEPT:
        return None
    return {"url": link(row) if links else None, "sha256": row.sha256, "size": row.size}


def files_data(
    training: Training, rows: list[KeptFile] | None = None, *, links: bool = True
) -> dict[str, Any] | None:
    """The ``files`` object of a training: None unless it completed. ``links=False``
    leaves the URLs None, for what is stored (an event callback signs them when sent)."""
    if training.outcome != TrainingOutcome.COMPLETED:
        return None
    rows = list(training.kept_files.all()) if rows is None else rows
    by_kind = {row.kind: row for row in rows}
    states = {row.state for row in rows}
    if FileState.FAILED in states:
        state = FileState.FAILED
    elif FileState.PENDING in states or FileKind.LORA not in by_kind:
        state = FileState.PENDING
    else:
        state = FileState.KEPT
    errors = [row.last_error for row in rows if row.state == FileState.FAILED and row.last_error]
    return {
        "state": str(state),
        "lora": _file_data(by_kind.get(FileKind.LORA), links=links),
        "config": _file_data(by_kind.get(FileKind.CONFIG), links=links),
        "error": errors[0] if errors else "",
    }


def read_range(row: KeptFile, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start``..``end`` (inclusive) of a kept file, in chunks, from any storage."""
    store = storage()
    remaining = end - start + 1
    bucket = getattr(store, "bucket", None)
    if bucket is not None:
        # Streamed from S3 with a Range request, never the whole object in memory.
        obj = bucket.Object(store._normalize_name(row.name))  # type: ignore[attr-defined]
        with closing(obj.get(Range=f"bytes={start}-{end}")["Body"]) as body:
            yield from body.iter_chunks(CHUNK)
        return
    with store.open(row.name, "rb") as source:
        source.seek(start)
        while remaining > 0:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def delete_stored(sender: Any, *, instance: KeptFile, **kwargs: Any) -> None:
    """post_delete receiver: the row's bytes go once the deletion commits."""
    name = instance.name
    if not name:
        return

    def remove() -> None:
        try:
            storage().delete(name)
        except Exception:
            logger.exception("Could not delete the kept file %s", name)

    transaction.on_commit(remove)


def superseded(now=None) -> dict[str, Any]:
    """For ``prune``: files of attempts replaced AVATAR_FILES_SUPERSEDED_DAYS ago."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.AVATAR_FILES_SUPERSEDED_DAYS)
    newer = Training.objects.filter(
        avatar_id=OuterRef("training__avatar_id"),
        attempt__gt=OuterRef("training__attempt"),
        created_at__lt=cutoff,
    )
    rows = KeptFile.objects.filter(Exists(newer)).exclude(
        training__avatar__current_training=F("training_id")
    )
    return {"superseded_avatar_files": rows}


def stale_temporaries(older_than: timedelta = timedelta(days=1)) -> int:
    """Delete temporary files a crash left behind (``prune``). Returns how many went."""
    store = storage()
    try:
        _dirs, names = store.listdir(TEMP_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    cutoff = timezone.now() - older_than
    removed = 0
    for name in names:
        path = f"{TEMP_DIR}/{name}"
        try:
            if store.get_modified_time(path) < cutoff:
                store.delete(path)
                removed += 1
        except Exception:
            logger.warning("Could not look at the temporary file %s", path, exc_info=True)
    return removed
