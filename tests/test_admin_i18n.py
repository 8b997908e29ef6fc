"""The admin follows the staff member's browser language; Russian is compiled and shipped."""

from __future__ import annotations

from pathlib import Path

from django.urls import reverse

from monitoring import transitions

ROOT = Path(__file__).resolve().parent.parent
CHANGELIST = reverse("admin:monitoring_avatar_changelist")


def test_the_compiled_russian_catalog_is_in_the_repository():
    assert (ROOT / "locale/ru/LC_MESSAGES/django.mo").stat().st_size > 10_000


def test_the_avatar_admin_speaks_russian_to_a_russian_browser(admin_client, training_avatar):
    _avatar, training = training_avatar(request_id="req-ru")
    transitions.flag_stuck(training, reason="в очереди 2 часа")

    page = admin_client.get(CHANGELIST, HTTP_ACCEPT_LANGUAGE="ru-RU,ru;q=0.9").content.decode()

    assert "Перепроверить на fal сейчас (в очередь воркеру)" in page
    assert "Обучается · В очереди" in page
    assert "зависло" in page
    assert "Зависшие" in page  # the stuck filter
    assert "Выберите" in page  # Django's own admin strings follow too


def test_the_dashboard_and_index_speak_russian(admin_client):
    index = admin_client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    dashboard = admin_client.get(reverse("admin:monitoring_dashboard"), HTTP_ACCEPT_LANGUAGE="ru").content.decode()

    assert "Зависшие обучения" in index and "Панель мониторинга" in index
    assert "Периодическая проверка" in dashboard
    assert "НИ РАЗУ НЕ ЗАПУСКАЛАСЬ" in dashboard
    assert "Зависших нет." in dashboard


def test_an_english_browser_gets_english(admin_client, training_avatar):
    training_avatar(request_id="req-en")

    page = admin_client.get(CHANGELIST, HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9").content.decode()

    assert "Re-check now on fal (queued to the worker)" in page
    assert "Перепроверить" not in page
