"""Property (issue 30, finding 6): whatever text or number reaches the API's inputs or the
admin's URLs, the answer is never a 5xx, and a refused request changes nothing.

Generated strings include NUL, unpaired surrogates and every other code point; numbers
include NaN, infinity and integers far beyond 64 bits. Derandomized with a fixed
example budget, so every run throws the same ~540 requests (in well under 30 s),
through the real views and PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
from urllib.parse import quote

import pytest
from django.contrib import admin
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitoring.api.models import ClientAvatar, IdempotencyKey
from monitoring.models import Owner
from tests.api_support import body
from tests.support import snapshot

pytestmark = pytest.mark.django_db
_serial = itertools.count()

PROPERTY = settings(
    derandomize=True,
    deadline=None,
    database=None,
    # Every field of the start body drawn at least twice, with odd values among them.
    max_examples=50,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ODD = ["\x00", "a\x00b", "\ud800", "x\udfff", "1e400", "NaN", "-1", "0", "9" * 30, "../", "%00", ""]
# Every code point, surrogates and controls included, and the usual suspects.
texts = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),
    st.sampled_from(ODD),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(texts, numbers, st.booleans(), st.none())
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)


def _state() -> tuple:
    return (
        snapshot(),
        Owner.objects.count(),
        ClientAvatar.objects.count(),
        IdempotencyKey.objects.count(),
    )


def _q(text: str) -> str:
    """``text`` as a client puts it in a URL: its UTF-8 bytes (lone surrogates as they
    would be encoded) percent-encoded."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


# What a WSGI server can hand us as a header: latin-1 text without control characters.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)


def _dumps(value) -> str:
    # JSON as a client may send it: NaN and Infinity tokens, surrogates escaped.
    return json.dumps(value, allow_nan=True)


@pytest.fixture
def quick_fal(fal, settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.API_RATE_LIMIT_PER_MINUTE = 100_000  # hundreds of calls in seconds, by design
    fal.script(queue_seconds=600)
    return fal


@PROPERTY
@given(
    field=st.sampled_from(
        [
            "name",
            "trigger",
            "images_url",
            "training_type",
            "settings",
            "settings-key",
            "owner.username",
            "owner.telegram_id",
            "owner.language",
        ]
    ),
    value=json_values,
)
def test_the_start_body_never_answers_5xx_and_a_refusal_changes_nothing(
    quick_fal, bot, field, value
):
    data = body()
    if field == "settings-key":
        data["settings"] = {str(value) if not isinstance(value, str) else value: 1}
    elif field.startswith("owner."):
        data["owner"][field.split(".")[1]] = value
    else:
        data[field] = value
    before = _state()

    response = bot.post("/api/v1/trainings", raw=_dumps(data), key=f"k-{next(_serial)}")

    assert response.status_code < 500, response.content
    if response.status_code != 201:
        assert response.status_code in (400, 409, 422), response.content
        answer = response.json()
        assert answer["error"] and answer["detail"]
        if response.status_code == 422:
            assert answer["fields"]  # names the field
        assert _state() == before


@PROPERTY
@given(
    request_id=texts,
    endpoint=texts,
    name=texts,
)
def test_the_adopt_body_never_answers_5xx_and_a_refusal_changes_nothing(
    quick_fal, bot, request_id, endpoint, name
):
    before = _state()
    adopt = {
        "request_id": request_id,
        "endpoint": endpoint,
        "owner": {"telegram_id": 5},
        "name": name,
    }

    response = bot.post("/api/v1/trainings/adopt", raw=_dumps(adopt))

    assert response.status_code < 500, response.content
    assert response.status_code in (400, 404, 422), response.content
    assert _state() == before


@PROPERTY
@given(
    segment=texts,
    query=st.dictionaries(
        st.sampled_from(["owner_telegram_id", "status", "cursor", "limit", "x"]),
        st.one_of(texts, numbers.map(str)),
        max_size=3,
    ),
    key=header_text,
)
@example(segment="9" * 30, query={}, key="")  # an id no 64-bit column holds, on every run
def test_api_paths_queries_and_keys_never_answer_5xx_nor_change_anything(
    quick_fal, bot, make_avatar, segment, query, key
):
    make_avatar()  # something to find, cancel or start if a path named it
    before = _state()
    avatar = _q(segment)
    answers = [
        bot.get(f"/api/v1/avatars/{avatar}"),
        bot.get("/api/v1/avatars?" + "&".join(f"{_q(k)}={_q(v)}" for k, v in query.items())),
        bot.post(f"/api/v1/avatars/{avatar}/cancel"),
        bot.post(f"/api/v1/avatars/{avatar}/trainings", headers={"Idempotency-Key": key}),
    ]

    for response in answers:
        assert response.status_code < 500, (response.request, response.content)
        assert response.status_code in (200, 400, 404, 405, 409, 422), response.content
    assert _state() == before


def _admin_routes() -> list[str]:
    return [f"{m._meta.app_label}/{m._meta.model_name}" for m in admin.site._registry]


@settings(PROPERTY, max_examples=80)  # fewer leave some of the admin's routes unvisited
@given(
    route=st.sampled_from(_admin_routes()),
    object_id=texts,
    page=st.sampled_from(["change/", "history/", "delete/", "do/cancel_training/", ""]),
    action=st.sampled_from(["cancel_training", "retrain", "recheck", "mark_failed", "revoke"]),
)
def test_admin_urls_and_action_posts_never_answer_5xx_nor_change_anything(
    admin_user, training_avatar, route, object_id, page, action
):
    staff = Client(raise_request_exception=False)
    staff.force_login(admin_user)
    training_avatar(request_id=f"req-admin-{next(_serial)}")
    before = _state()
    url = f"/admin/{route}/{_q(object_id)}/{page}"

    answers = [
        staff.get(url),
        staff.post(url, {}),
        staff.post(
            f"/admin/{route}/",
            f"action={action}&_selected_action={_q(object_id)}",
            content_type="application/x-www-form-urlencoded",
        ),
    ]

    for response in answers:
        assert response.status_code < 500, (url, response.status_code)
    assert _state() == before
