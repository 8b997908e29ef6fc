"""gunicorn settings for the web role (``bin/docker-entrypoint web``).

Threaded workers, so a request waiting on PostgreSQL or a slow client holds one thread,
not a worker; behind nginx with request buffering slow clients never reach gunicorn
(``bench/slow_clients.py``). Every value can be overridden from the environment.
See docs/operations.md#running-in-production.
"""

from __future__ import annotations

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# A worker whose main loop is silent this long is restarted. With gthread a slow
# request does not silence the loop, so this catches a wedged process, not a slow client.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "20"))
# On SIGTERM, requests in flight get this long to finish (below Docker's 10 s).
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "8"))
# Idle keep-alive connections (nginx's upstream pool, load balancers) are closed after
# this many seconds, so idle sockets do not pile up.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Room for connections parked in keep-alive beside the threads that work.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "200"))
# Small request heads: fal's headers and the admin's cookies fit easily.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# The proxies whose X-Forwarded-* headers are believed: the same variable (and rule)
# as avatarsite.client_address.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
