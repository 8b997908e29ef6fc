# One image, two roles:
#   web:    docker run IMAGE web      (gunicorn on $PORT, settings in gunicorn.conf.py)
#   worker: docker run IMAGE worker   (django-q2: periodic checks, restore, notifications)
#   once per release: docker run IMAGE migrate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PTB_TIMEDELTA=true \
    PORT=8000

WORKDIR /app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app

# Dependencies in their own layer: rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=app:app . .

# Static files for the admin, served by whitenoise. The secret exists only for this
# build step; the real one comes from the environment at run time.
RUN DEBUG=0 SECRET_KEY=build-only-not-a-secret ALLOWED_HOSTS=localhost \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 FAL_KEY=build:only \
    python manage.py collectstatic --noinput \
    && rm -f /tmp/build.sqlite3 \
    && install -d -o app -g app -m 750 /app/var/avatar-files

USER 10001:10001
EXPOSE 8000

# The web role probes its liveness endpoint; the worker checks its own heartbeat.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "bin/container-healthcheck"]

ENTRYPOINT ["bin/docker-entrypoint"]
CMD ["web"]
