"""The worker's processes: one django-q2 cluster per role, and the supervisor of both.

``python manage.py qcluster`` runs :mod:`monitoring.worker.supervisor`, which starts
one child per role (``checks``: restore, periodic checks, retention; ``notifications``:
Telegram delivery, on its own queue). ``--only ROLE`` runs one role, django-q2's own
cluster, in the command's process (:mod:`monitoring.worker.cluster`).
"""
