"""Secrets never reach the log, whatever formats them."""

from __future__ import annotations

import logging

from avatarsite.log_redaction import REDACTED, RedactSecrets


def _format(message: str, *args) -> str:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, args, None)
    RedactSecrets().filter(record)
    return record.getMessage()


def test_the_bot_token_and_its_secret_half_are_redacted_but_not_the_bot_id(settings):
    settings.TELEGRAM_BOT_TOKEN = "123456:AAH-secret-part-of-the-token"
    line = _format(
        "GET https://api.telegram.org/bot%s/sendMessage chat=-1001234567890",
        settings.TELEGRAM_BOT_TOKEN,
    )
    assert "AAH-secret" not in line and REDACTED in line
    assert "-1001234567890" in line  # a chat id containing the bot id stays readable
    assert REDACTED in _format("leaked secret half: AAH-secret-part-of-the-token")


def test_the_fal_key_is_redacted_in_messages_and_tracebacks(settings):
    settings.FAL_KEY = "key-id-1:fal-secret-value"
    try:
        raise RuntimeError("Authorization: Key key-id-1:fal-secret-value")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactSecrets().filter(record)
    assert "fal-secret-value" not in record.exc_text


def test_anything_shaped_like_a_key_or_one_of_our_tokens_is_redacted_too(settings):
    from avatarsite.log_redaction import redact

    foreign = "0a1b2c3d-1111-2222-3333-444455556666:0123456789abcdef0123456789abcdef"
    text = redact(
        f"fal: {foreign}; Authorization: Key other-id:other-secret; "
        "token atm_AbCdEfGhIjKlMnOpQrStUvWxYz012345; secret whsec_MDEyMzQ1Njc4OWFiY2RlZmdo"
    )

    for secret in (
        foreign,
        "0123456789abcdef0123456789abcdef",
        "other-secret",
        "atm_AbCd",
        "whsec_",
    ):
        assert secret not in text
    # Ordinary text with colons stays readable.
    kept = "No user found for Key ID and Secret at 12:30:45 (request_id=abc:def)"
    assert redact(kept) == kept


def test_every_token_of_ours_is_redacted(settings):
    from avatarsite.log_redaction import redact

    settings.HEALTHZ_TOKEN = "healthz-token-0123456789"
    settings.METRICS_TOKEN = "metrics-token-0123456789"

    text = redact(f"{settings.HEALTHZ_TOKEN} {settings.METRICS_TOKEN} {settings.SECRET_KEY}")

    assert text == "[redacted] [redacted] [redacted]"
