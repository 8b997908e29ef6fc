"""The small things staff noticed: the product's name, one date format, an overdue check
that says so, Russian plurals, and no "Save and add another" on monitoring pages."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils import timezone

from monitoring import roles
from monitoring.models import Training
from monitoring.status_checks import restore_monitoring

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("language", ["en", "ru"])
def test_the_admin_and_its_login_page_name_the_product_not_django(client, language):
    page = client.get(reverse("admin:login"), headers={"Accept-Language": language})
    html = page.content.decode()
    assert "Django" not in re.sub(r"<script.*?</script>|<link[^>]*>", "", html, flags=re.S)
    expected = "Avatar training monitor" if language == "en" else "Мониторинг обучения аватаров"
    assert expected in html


def test_lists_and_the_avatar_page_write_dates_one_way(admin_client, training_avatar):
    avatar, training = training_avatar("req-dates")
    moment = timezone.now().replace(microsecond=0)
    Training.objects.filter(pk=training.pk).update(created_at=moment)
    listing = admin_client.get(reverse("admin:monitoring_training_changelist")).content.decode()
    page = admin_client.get(
        reverse("admin:monitoring_avatar_change", args=[avatar.pk])
    ).content.decode()
    stamp = moment.strftime("%Y-%m-%d %H:%M")
    assert stamp in listing and stamp in page
    assert not re.search(r"\b(a\.m\.|p\.m\.|midnight|noon)\b", listing)


def test_a_check_that_is_due_in_the_past_reads_overdue_not_ago(admin_client, training_avatar):
    avatar, training = training_avatar("req-overdue")
    Training.objects.filter(pk=training.pk).update(
        next_check_at=timezone.now() - timedelta(seconds=26)
    )
    page = admin_client.get(
        reverse("admin:monitoring_avatar_change", args=[avatar.pk])
    ).content.decode()
    row = re.search(r"Next check</th><td>(.*?)</td>", page, flags=re.S).group(1)
    assert re.search(r"overdue by 2[6-9] s", row) and "ago" not in row


@pytest.mark.parametrize(("count", "words"), [(1, "для 1 аватара"), (5, "для 5 аватаров")])
def test_the_restore_line_uses_russian_plurals(training_avatar, caplog, count, words):
    for i in range(count):
        training_avatar(f"req-restore-{i}")
    with caplog.at_level(logging.INFO, logger="monitoring"):
        restore_monitoring(enqueue=False)
    assert f"✅ Мониторинг восстановлен {words}" in caplog.text


def test_operators_are_not_offered_save_and_add_another(client, make_avatar):
    operator = User.objects.create_user("operator", password="x", is_staff=True)
    operator.groups.add(Group.objects.get(name=roles.OPERATORS))
    client.force_login(operator)
    avatar = make_avatar(ready=False)
    for url in (
        reverse("admin:monitoring_avatar_add"),
        reverse("admin:monitoring_avatar_change", args=[avatar.pk]),
        reverse("admin:monitoring_owner_add"),
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        assert 'name="_addanother"' not in page.content.decode(), url
        assert 'name="_save"' in page.content.decode(), url
