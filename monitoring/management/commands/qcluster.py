"""``qcluster``: startup restore, then django-q2's own cluster.

The monitoring app is listed before django_q in INSTALLED_APPS, so this command wins;
it makes every active training due, enqueues a run, and hands over.
"""

from __future__ import annotations

import os

from django.conf import settings
from django_q.management.commands.qcluster import Command as QClusterCommand

from monitoring import restore


class Command(QClusterCommand):
    help = "Restores monitoring of every active training, then starts a Django Q cluster."

    def handle(self, *args, **options):
        name = options.get("cluster_name") or os.environ.get("Q_CLUSTER_NAME") or ""
        # Other clusters (notifications) have their own queues: restore belongs to the
        # main one only.
        if name in ("", settings.Q_CLUSTER.get("name")):
            restore.restore_monitoring()
        super().handle(*args, **options)
