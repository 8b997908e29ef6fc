"""A fake Telegram Bot API on loopback, for tests, the benchmark and the demo.

python-telegram-bot really sends to it over HTTP (``TELEGRAM_API_BASE_URL =
fake.base_url``): form-encoded ``POST /bot<TOKEN>/sendMessage``, ``/editMessageText``
and ``/getMe``,
answered with the same HTTP codes and JSON shapes as Telegram (the library reads
the HTTP status, not ``ok``). Each chat can be scripted with a list of answers
consumed one per request; every message that was accepted is recorded.

    fake = FakeTelegramAPI(token="123:abc").start()
    fake.script(42, fake.retry_after(1), fake.server_error(), fake.ok())
    ...
    fake.messages_to(42)   # [ReceivedMessage(chat_id=42, text=..., ...)]
    fake.edits_to(42)      # [ReceivedEdit(chat_id=42, message_id=..., text=..., ...)]

An edit answers as Telegram does: "message is not modified" for the same text,
"message to edit not found" for a message it never sent or one the user deleted
(``fake.delete_message``), and the chat's scripted answers (403, 429) like a send.

``FakeTelegramAPI(tls_dir=path)`` speaks HTTPS with a self-signed certificate
(``fakes.tls``; the client trusts ``fake.cert_file`` through SSL_CERT_FILE), so that a
benchmark sees the TCP and TLS handshakes a real Bot API costs. ``fake.outage(502)``
makes every request (sendMessage and getMe) fail until ``fake.outage(None)``;
``fake.connections`` counts the connections clients opened.

Never imported by production code.
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Answer:
    """One scripted answer: an HTTP status and JSON body, after an optional delay."""

    status: int = 200
    body: dict[str, Any] | None = None  # None: a success carrying the message
    delay: float = 0.0


@dataclass(frozen=True)
class ReceivedMessage:
    chat_id: int
    text: str  # as sent (HTML source)
    plain: str  # what the user sees: tags removed, entities decoded, as Telegram shows it
    parse_mode: str
    message_id: int
    received_at: float  # time.time() when the fake accepted it
    options: dict[str, str] = field(default_factory=dict)  # the other form fields, as sent


@dataclass(frozen=True)
class ReceivedEdit:
    chat_id: int
    message_id: int
    text: str
    plain: str
    received_at: float


# The tags Telegram's HTML parse mode accepts; anything else is "can't parse entities".
_TELEGRAM_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
}


class _TelegramHTML(HTMLParser):
    """Parses text the way Telegram's parse_mode=HTML does, strictly enough to catch bugs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag not in _TELEGRAM_TAGS:
            raise ValueError(f'Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise ValueError(f'Unexpected end tag "{tag}"')
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def render_plain(text: str, parse_mode: str) -> str:
    """What a Telegram user would see; raises ValueError where Telegram answers 400."""
    if parse_mode.upper() != "HTML":
        return text
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{parser.open[-1]}"')
    return "".join(parser.parts)


@dataclass
class _State:
    token: str
    scripts: dict[int, list[Answer]] = field(default_factory=dict)
    messages: list[ReceivedMessage] = field(default_factory=list)
    requests: dict[int, int] = field(default_factory=dict)
    request_times: list[tuple[int, float]] = field(default_factory=list)
    get_me_calls: int = 0
    default_delay: float = 0.0
    outage_status: int | None = None
    outage_calls: dict[str, int] = field(default_factory=dict)  # method -> failed requests
    edits: list[ReceivedEdit] = field(default_factory=list)
    current: dict[tuple[int, int], str] = field(default_factory=dict)  # (chat, id) -> text


def _error(code: int, description: str, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return body


class FakeTelegramAPI:
    def __init__(
        self, token: str = "123456:TEST-token-for-the-fake-bot-api", *, tls_dir: Path | None = None
    ) -> None:
        self.state = _State(token=token)
        self._lock = threading.Lock()
        self._message_ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.cert_file: str | None = None
        self._tls: ssl.SSLContext | None = None
        self.connections = 0
        if tls_dir is not None:
            from fakes.tls import make_self_signed_cert

            cert, key = make_self_signed_cert(Path(tls_dir))
            self.cert_file = str(cert)
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(cert, key)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeTelegramAPI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                with fake._lock:
                    fake.connections += 1
                super().setup()

            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_POST

        tls = self._tls

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                # The handshake happens in the connection's own thread, not the accept loop.
                if tls is not None:
                    try:
                        request = tls.wrap_socket(request, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                super().finish_request(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The value for TELEGRAM_API_BASE_URL."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/bot"

    @property
    def token(self) -> str:
        return self.state.token

    def reset(self, *, token: str | None = None) -> None:
        with self._lock:
            self.state = _State(token=token or self.state.token)

    # --- scripting ---------------------------------------------------------------------

    def accept_token(self, token: str) -> None:
        """Only this token is valid from now on (anything else: 401 Unauthorized)."""
        with self._lock:
            self.state.token = token

    def script(self, chat_id: int, *answers: Answer) -> None:
        """Answers for the next requests to ``chat_id``, in order; then plain success."""
        with self._lock:
            self.state.scripts.setdefault(int(chat_id), []).extend(answers)

    def outage(self, status: int | None = 502) -> None:
        """Every request answers ``status`` (a Bot API down for everyone); None ends it."""
        with self._lock:
            self.state.outage_status = status

    def set_delay(self, seconds: float) -> None:
        """Every answer waits this long (a slow Telegram)."""
        with self._lock:
            self.state.default_delay = seconds

    @staticmethod
    def ok(delay: float = 0.0) -> Answer:
        return Answer(200, None, delay)

    @staticmethod
    def retry_after(seconds: int) -> Answer:
        return Answer(
            429, _error(429, f"Too Many Requests: retry after {seconds}", retry_after=seconds)
        )

    @staticmethod
    def blocked() -> Answer:
        return Answer(403, _error(403, "Forbidden: bot was blocked by the user"))

    @staticmethod
    def deactivated() -> Answer:
        return Answer(403, _error(403, "Forbidden: user is deactivated"))

    @staticmethod
    def never_started() -> Answer:
        return Answer(403, _error(403, "Forbidden: bot can't initiate conversation with a user"))

    @staticmethod
    def migrated(new_chat_id: int) -> Answer:
        return Answer(
            400,
            _error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=new_chat_id,
            ),
        )

    @staticmethod
    def bad_request(description: str = "Bad Request: can't parse entities") -> Answer:
        return Answer(400, _error(400, description))

    @staticmethod
    def server_error(code: int = 500) -> Answer:
        return Answer(code, _error(code, "Internal Server Error"))

    @staticmethod
    def slow(seconds: float) -> Answer:
        return Answer(200, None, seconds)

    # --- what was received ----------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self.state.messages)

    def messages_to(self, chat_id: int) -> list[ReceivedMessage]:
        return [m for m in self.messages if m.chat_id == int(chat_id)]

    def requests_to(self, chat_id: int) -> int:
        with self._lock:
            return self.state.requests.get(int(chat_id), 0)

    def edits_to(self, chat_id: int) -> list[ReceivedEdit]:
        with self._lock:
            return [e for e in self.state.edits if e.chat_id == int(chat_id)]

    def text_of(self, chat_id: int, message_id: int) -> str | None:
        """What the user sees in that message now (None: never sent, or deleted)."""
        with self._lock:
            return self.state.current.get((int(chat_id), int(message_id)))

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """The user deleted the message: editing it now answers "not found"."""
        with self._lock:
            self.state.current.pop((int(chat_id), int(message_id)), None)

    @property
    def get_me_calls(self) -> int:
        with self._lock:
            return self.state.get_me_calls

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.messages
            if len(messages) >= count:
                return messages
            time.sleep(0.01)
        return self.messages

    # --- HTTP ------------------------------------------------------------------------------

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = handler.path.split("?", 1)[0]
        if not path.startswith("/bot") or "/" not in path[4:]:
            self._reply(handler, 404, _error(404, "Not Found"))
            return
        token, _, method = path[4:].partition("/")
        if self.state.outage_status is not None:
            code = self.state.outage_status
            with self._lock:
                calls = self.state.outage_calls
                calls[method.lower()] = calls.get(method.lower(), 0) + 1
            self._reply(handler, code, _error(code, "Bad Gateway"))
            return
        if method.lower() == "getme":
            with self._lock:
                self.state.get_me_calls += 1
        if token != self.state.token:
            self._reply(handler, 401, _error(401, "Unauthorized"))
            return
        content_type = handler.headers.get("Content-Type", "")
        if raw and "application/x-www-form-urlencoded" not in content_type:
            # Telegram accepts JSON too, but python-telegram-bot sends forms: a JSON body
            # here means the client is not what we think it is.
            self._reply(handler, 400, _error(400, f"Bad Request: unexpected {content_type}"))
            return
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8")).items()}
        if method.lower() == "getme":
            self._reply(
                handler,
                200,
                {
                    "ok": True,
                    "result": {
                        "id": int(token.split(":")[0]) if token.split(":")[0].isdigit() else 1,
                        "is_bot": True,
                        "first_name": "Avatar bot",
                        "username": "avatar_test_bot",
                    },
                },
            )
            return
        if method.lower() not in ("sendmessage", "editmessagetext"):
            self._reply(handler, 404, _error(404, "Not Found: method not found"))
            return
        editing = method.lower() == "editmessagetext"
        try:
            chat_id = int(form["chat_id"])
            text = form["text"]
        except (KeyError, ValueError):
            self._reply(handler, 400, _error(400, "Bad Request: chat_id and text are required"))
            return
        if len(text) > 4096:
            self._reply(handler, 400, _error(400, "Bad Request: message is too long"))
            return
        try:
            plain = render_plain(text, form.get("parse_mode", ""))
        except ValueError as exc:
            self._reply(handler, 400, _error(400, f"Bad Request: can't parse entities: {exc}"))
            return
        with self._lock:
            self.state.requests[chat_id] = self.state.requests.get(chat_id, 0) + 1
            self.state.request_times.append((chat_id, time.time()))
            queue = self.state.scripts.get(chat_id)
            answer = queue.pop(0) if queue else Answer()
            delay = answer.delay or self.state.default_delay
        if delay:
            time.sleep(delay)
        if answer.status != 200 or answer.body is not None:
            self._reply(handler, answer.status, answer.body or {"ok": True, "result": True})
            return
        if editing:
            self._edit(handler, chat_id, form, text, plain)
            return
        with self._lock:
            message = ReceivedMessage(
                chat_id=chat_id,
                text=text,
                plain=plain,
                parse_mode=form.get("parse_mode", ""),
                message_id=next(self._message_ids),
                received_at=time.time(),
                options={
                    k: v for k, v in form.items() if k not in {"chat_id", "text", "parse_mode"}
                },
            )
            self.state.messages.append(message)
            self.state.current[(chat_id, message.message_id)] = text
        chat_type = "private" if chat_id > 0 else "supergroup"
        self._reply(
            handler,
            200,
            {
                "ok": True,
                "result": {
                    "message_id": message.message_id,
                    "date": int(message.received_at),
                    "chat": {"id": chat_id, "type": chat_type},
                    "text": text,
                },
            },
        )

    def _edit(
        self,
        handler: BaseHTTPRequestHandler,
        chat_id: int,
        form: dict[str, str],
        text: str,
        plain: str,
    ) -> None:
        try:
            message_id = int(form["message_id"])
        except (KeyError, ValueError):
            self._reply(
                handler, 400, _error(400, "Bad Request: message identifier is not specified")
            )
            return
        with self._lock:
            current = self.state.current.get((chat_id, message_id))
            if current is None:
                answer = (400, _error(400, "Bad Request: message to edit not found"))
            elif current == text:
                answer = (
                    400,
                    _error(
                        400,
                        "Bad Request: message is not modified: specified new message content "
                        "and reply markup are exactly the same as a current content and reply "
                        "markup of the message",
                    ),
                )
            else:
                self.state.current[(chat_id, message_id)] = text
                self.state.edits.append(ReceivedEdit(chat_id, message_id, text, plain, time.time()))
                answer = (
                    200,
                    {
                        "ok": True,
                        "result": {
                            "message_id": message_id,
                            "date": int(time.time()),
                            "edit_date": int(time.time()),
                            "chat": {
                                "id": chat_id,
                                "type": "private" if chat_id > 0 else "supergroup",
                            },
                            "text": text,
                        },
                    },
                )
        self._reply(handler, *answer)


def main() -> None:  # pragma: no cover - manual runs and the demo
    import argparse

    parser = argparse.ArgumentParser(description="Run the fake Telegram Bot API on loopback.")
    parser.add_argument("--token", default="123456:TEST-token-for-the-fake-bot-api")
    args = parser.parse_args()
    fake = FakeTelegramAPI(token=args.token).start()
    print(f"TELEGRAM_API_BASE_URL={fake.base_url}", flush=True)
    printed = edited = 0
    try:
        while True:
            time.sleep(0.5)
            received = fake.messages
            for message in received[printed:]:
                print(f"→ {message.chat_id}: {message.text}", flush=True)
            printed = len(received)
            edits = fake.state.edits
            for edit in edits[edited:]:
                print(f"✎ {edit.chat_id} #{edit.message_id}: {edit.text}", flush=True)
            edited = len(edits)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
