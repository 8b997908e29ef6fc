import cProfile, pstats, io, time
import pytest
from django.test import Client
from monitoring import transitions
from monitoring.models import EventSource
from tests.api_support import give

pytestmark = pytest.mark.django_db(transaction=True)

def _make(bot, make_avatar):
    avatar = make_avatar()
    give(avatar, bot)
    started = transitions.begin_training(avatar, endpoint="fal-ai/x", arguments={}, webhook_url="", source=EventSource.COMMAND)
    transitions.record_submitted(started.training, request_id="r-1", source=EventSource.COMMAND)
    transitions.complete(started.training, lora_url="https://x/l.safetensors", source=EventSource.CHECK)
    return avatar

@pytest.mark.parametrize("path", ["/api/v1/avatars/{}", "/bench/minimal-api/{}"])
def test_prof(bot, make_avatar, settings, path):
    settings.API_RATE_LIMIT_PER_MINUTE = 10**7
    settings.ROOT_URLCONF = "bench.api"
    avatar = _make(bot, make_avatar)
    c = Client()
    h = {"Authorization": f"Bearer {bot.token}"}
    p = path.format(avatar.pk)
    for _ in range(20): assert c.get(p, headers=h).status_code == 200
    t=time.perf_counter()
    for _ in range(300): c.get(p, headers=h)
    print(p, "per GET ms (no profiler)", (time.perf_counter()-t)/300*1000)
    pr = cProfile.Profile(); pr.enable()
    for _ in range(300): c.get(p, headers=h)
    pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])
