import time
import pytest
from django.db import connection
from monitoring import transitions
from monitoring.models import EventSource, Training, KeptFile
from monitoring.api import representation
from tests.api_support import give

pytestmark = pytest.mark.django_db(transaction=True)

def t(label, fn, n=300):
    fn()
    s=time.perf_counter()
    for _ in range(n): fn()
    print(label, round((time.perf_counter()-s)/n*1000, 3), "ms")

def test_t(bot, make_avatar):
    avatar = make_avatar(); give(avatar, bot)
    started = transitions.begin_training(avatar, endpoint="fal-ai/x", arguments={}, webhook_url="", source=EventSource.COMMAND)
    transitions.record_submitted(started.training, request_id="r-1", source=EventSource.COMMAND)
    transitions.complete(started.training, lora_url="https://x/l.safetensors", source=EventSource.CHECK)
    qs = lambda: Training.objects.filter(avatar_id=avatar.pk).select_related("avatar__owner", "avatar__api_link").defer(*representation.avatar_read.UNSHOWN).order_by("attempt")
    t("compile join", lambda: qs().query.get_compiler("default").as_sql())
    t("run join", lambda: list(qs()))
    t("values_list join", lambda: list(qs().values_list()))
    t("join+client", lambda: list(qs().filter(bot.client.avatar_filter(prefix="avatar__"))))
    print(qs().filter(bot.client.avatar_filter(prefix="avatar__")).query)
    t("kept", lambda: list(KeptFile.objects.filter(training_id__in=[1])))
    t("load", lambda: representation.load(avatar.pk, bot.client))
    def raw():
        with connection.cursor() as c:
            c.execute("select 1 from monitoring_training where avatar_id=%s", [avatar.pk]); c.fetchall()
    t("raw trivial", raw)
    loaded = representation.load(avatar.pk, bot.client)
    t("avatar_data", lambda: representation.avatar_data(loaded[0], loaded[1], kept=loaded[2]))
    from monitoring.api.schemas import AvatarOut
    d = representation.avatar_data(loaded[0], loaded[1], kept=loaded[2])
    t("pydantic", lambda: AvatarOut.model_validate(d).model_dump())
