"""The README's first command, run as a user would: it serves the admin with the worker."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support import fetch, free_port, start_bin_run, user_shell, wait_for


@pytest.mark.slow
def test_bin_run_serves_the_admin_on_sqlite_with_the_worker_running_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {**user_shell(tmp_path), "PORT": str(port)}
    process, output, reader = start_bin_run(env, start_new_session=True)
    try:
        status, page = wait_for(
            lambda: fetch(f"http://127.0.0.1:{port}/admin/login/"), 180, "the admin login page"
        )
        assert status == 200 and "csrfmiddlewaretoken" in page
        wait_for(
            lambda: any("Мониторинг восстановлен" in line for line in output),
            60,
            "the worker's restore line",
        )
        # The banner comes last, after the start-up output.
        wait_for(lambda: any("Ctrl-C stops" in line for line in output), 60, "the banner")
        text = "".join(output)
        assert f"http://127.0.0.1:{port}/admin/" in text
        assert "createsuperuser" in text
        assert "DEMO" in text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's group
        process.wait(timeout=60)
    reader.join(timeout=5)
    # Ctrl-C stopped everything it started: the port is free and no process is left.
    assert fetch(f"http://127.0.0.1:{port}/admin/login/") is None
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.killpg(process.pid, 0) and False, 15, "the process group to end")
