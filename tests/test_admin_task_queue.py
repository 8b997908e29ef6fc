"""django-q2's pages: read-only, superusers only, and no task argument or result unpickled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils import timezone
from django_q.models import Failure, OrmQ, Schedule, Success, Task
from django_q.tasks import async_task

from monitoring import roles

SPRUNG: list[str] = []


def _spring(label: str) -> str:
    """Runs only if someone unpickles a Trap."""
    SPRUNG.append(label)
    return label


class Trap:
    """A pickle whose loading calls ``_spring``: what a forged row in the database would do."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __reduce__(self):
        return (_spring, (self.label,))

    def __deepcopy__(self, memo):
        # picklefield deep-copies before pickling: keep the trap itself in the row.
        return self


@pytest.fixture
def tasks(db):
    SPRUNG.clear()
    now = timezone.now()
    for pk, success in (("a" * 32, True), ("b" * 32, False)):
        Task.objects.create(
            id=pk,
            name=f"task-{'ok' if success else 'failed'}",
            func="monitoring.tasks.recheck",
            args=(Trap(f"args-{pk[0]}"),),
            kwargs={"trap": Trap(f"kwargs-{pk[0]}")},
            result=Trap(f"result-{pk[0]}"),
            started=now - timedelta(seconds=3),
            stopped=now,
            success=success,
        )
    async_task("monitoring.tasks.recheck", Trap("queued"), task_name="queued-one")
    assert SPRUNG == []
    return {
        "success": Success.objects.only("id").get(),
        "failure": Failure.objects.only("id").get(),
        "ormq": OrmQ.objects.only("id").get(),
        "schedule": Schedule.objects.order_by("pk").first(),
    }


PAGES = ("schedule", "success", "failure", "ormq")


@pytest.mark.parametrize("model", PAGES)
def test_a_superuser_reads_each_page_and_nothing_is_unpickled(admin_client, tasks, model):
    obj = tasks[model]

    listing = admin_client.get(reverse(f"admin:django_q_{model}_changelist"))
    detail = admin_client.get(reverse(f"admin:django_q_{model}_change", args=[obj.pk]))

    assert listing.status_code == 200 and detail.status_code == 200
    assert SPRUNG == []
    if model in ("success", "failure", "schedule"):
        assert "monitoring." in listing.content.decode()
    assert listing.context["action_form"] is None  # no resubmit, no delete
    assert 'name="_save"' not in detail.content.decode()
    # The control: the rows are armed, loading them the ordinary way springs the trap.
    Task.objects.get(pk="a" * 32)
    assert OrmQ.objects.get(pk=tasks["ormq"].pk).task["name"] == "queued-one"
    assert {"args-a", "queued"} <= set(SPRUNG)


@pytest.mark.parametrize("model", PAGES)
def test_nobody_adds_changes_or_deletes_there_not_even_a_superuser(admin_client, tasks, model):
    obj = tasks[model]
    before = Task.objects.count(), OrmQ.objects.count(), Schedule.objects.count()
    change = reverse(f"admin:django_q_{model}_change", args=[obj.pk])

    assert admin_client.get(reverse(f"admin:django_q_{model}_add")).status_code == 403
    admin_client.post(change, {"func": "subprocess.getoutput", "name": "evil"})
    deleted = admin_client.post(
        reverse(f"admin:django_q_{model}_delete", args=[obj.pk]), {"post": "yes"}
    )

    assert deleted.status_code == 403
    assert (Task.objects.count(), OrmQ.objects.count(), Schedule.objects.count()) == before
    assert not Schedule.objects.filter(func="subprocess.getoutput").exists()
    assert SPRUNG == []


def test_a_schedule_cannot_be_added_by_a_crafted_post(admin_client, db):
    count = Schedule.objects.count()

    response = admin_client.post(
        reverse("admin:django_q_schedule_add"),
        {"func": "subprocess.getoutput", "args": "'id'", "schedule_type": "O", "repeats": -1},
    )

    assert response.status_code == 403
    assert Schedule.objects.count() == count


@pytest.mark.parametrize("model", PAGES)
def test_staff_who_are_not_superusers_do_not_see_the_task_queue(client, tasks, model):
    operator = User.objects.create_user("operator", is_staff=True)
    operator.groups.add(Group.objects.get(name=roles.OPERATORS))
    client.force_login(operator)

    listing = client.get(reverse(f"admin:django_q_{model}_changelist"))
    detail = client.get(reverse(f"admin:django_q_{model}_change", args=[tasks[model].pk]))
    index = client.get(reverse("admin:index")).content.decode()

    assert listing.status_code == 403 and detail.status_code == 403
    assert "/admin/django_q/" not in index
    assert SPRUNG == []
