"""``qcluster`` with no ``--only``: both roles as child processes (django-q2 reads the queue
name at import); a crash of one stops the other so the whole worker restarts."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from django.conf import settings

from monitoring.worker import cluster

logger = logging.getLogger("monitoring.worker")


def _role_command(role: str) -> list[str]:
    script = sys.argv[0]
    if script.endswith("__main__.py") or not os.path.isfile(script):  # python -m django
        return [sys.executable, "-m", "django", "qcluster", "--only", role, "--skip-checks"]
    return [sys.executable, script, "qcluster", "--only", role, "--skip-checks"]


class Supervisor:
    def __init__(self, roles: tuple[str, ...] = cluster.ROLES) -> None:
        self.roles = roles
        self.children: dict[int, tuple[str, subprocess.Popen]] = {}
        self.exit_code = 0

    def run(self) -> int:
        cluster.install_stop_handlers()
        cluster.adopt_orphans()
        cluster.set_process_title("qcluster supervisor")
        for role in self.roles:
            # A supervisor killed with SIGKILL still ends its roles (which end their workers).
            child = subprocess.Popen(
                _role_command(role),
                env=cluster.role_environment(role),
                preexec_fn=lambda: cluster.die_with_parent(signal.SIGTERM),
            )
            self.children[child.pid] = (role, child)
        logger.info(
            "Worker running: %s (grace %g s)",
            ", ".join(f"{role} (pid {pid})" for pid, (role, _c) in self.children.items()),
            settings.WORKER_STOP_GRACE_SECONDS,
        )
        while not cluster.stopping():
            self._reap()
            time.sleep(0.1)
        self._stop()
        return self.exit_code

    def _reap(self) -> bool:
        """Collect every ended child (and orphans); False once no child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            entry = self.children.pop(pid, None)
            if entry is None:
                continue  # an orphan handed to PID 1
            role, child = entry
            child.returncode = os.waitstatus_to_exitcode(status)
            if not cluster.stopping():
                logger.error(
                    "Worker role %s ended on its own (exit code %s): stopping the worker",
                    role,
                    child.returncode,
                )
                self.exit_code = 1
                cluster.request_stop()

    def _stop(self) -> None:
        logger.info("Worker stopping (%s)", cluster.STOP.signal_name)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)  # exactly one, whatever the group got
            except ProcessLookupError:
                pass
        while self.children and cluster.seconds_left(cluster.KILL_ROLES_BEFORE_END) > 0:
            self._reap()
            time.sleep(0.02)
        for pid, (role, _child) in list(self.children.items()):
            logger.warning("Worker role %s did not stop in time: killed", role)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.children:
            self._reap()
            time.sleep(0.01)
        # The processes of a role that was killed die with it (PR_SET_PDEATHSIG) and are
        # ours to reap: left to PID 1 they stay in the group until it gets round to them.
        end = time.monotonic() + 0.5
        while self._reap() and time.monotonic() < end:
            time.sleep(0.01)
        logger.info("Worker stopped")
