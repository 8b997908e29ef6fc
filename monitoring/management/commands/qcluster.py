"""``qcluster``: the whole worker in one command (replaces django-q2's, listed after us in
INSTALLED_APPS). See docs/operations.md#the-worker."""

from __future__ import annotations

import atexit
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from monitoring.worker import cluster


class Command(BaseCommand):
    help = (
        "Runs the worker: the periodic checks (with the startup restore and retention) and "
        "the notification delivery; --only picks one of them."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--only",
            choices=cluster.ROLES,
            default=None,
            help="Run one role only (for scale-out): checks or notifications.",
        )
        parser.add_argument(
            "-n",
            "--name",
            dest="cluster_name",
            default=None,
            help="The old form: a django-q2 cluster name (notifications = --only notifications).",
        )

    def handle(self, *args, only: str | None = None, cluster_name: str | None = None, **options):
        name = cluster_name or os.environ.get("Q_CLUSTER_NAME")
        role = only or cluster.role_for_cluster(name)
        if role == "":
            raise CommandError(
                f"Unknown cluster name {name!r}: use --only "
                f"{' or --only '.join(cluster.ROLES)} (or no option for both)"
            )
        if role is None:
            from monitoring.worker.supervisor import Supervisor

            code = Supervisor().run()
        else:
            self._run_as(role)
            code = cluster.RoleSentinel(role).run()
        # Everything is stopped: run the exit hooks (log and error-reporter flushes) and
        # skip the interpreter's teardown, which takes most of a second on a busy host.
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()
        os._exit(code)

    @staticmethod
    def _run_as(role: str) -> None:
        """Re-exec when django-q2 read another queue name at import."""
        from django_q.conf import Conf

        wanted = cluster.cluster_name(role)
        if Conf.CLUSTER_NAME == wanted:
            return
        env = cluster.role_environment(role)
        if env.get("Q_CLUSTER_NAME") == os.environ.get("Q_CLUSTER_NAME"):
            raise CommandError(
                f"django-q2 is configured for queue {Conf.CLUSTER_NAME}, not {wanted}"
            )
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
