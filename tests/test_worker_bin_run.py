"""``./bin/run`` started in the background (SIGINT ignored on entry) still stops on SIGINT."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from tests.support import fetch, free_port, start_bin_run, user_shell, wait_for


def _as_a_background_job() -> None:
    # What a non-interactive shell does to `./bin/run &`: SIGINT ignored on entry, which
    # bash cannot trap.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setsid()


@pytest.mark.slow
def test_bin_run_started_in_the_background_stops_on_sigint_to_its_pid(tmp_path):
    port = free_port()
    env = {**user_shell(tmp_path), "PORT": str(port)}
    process, output, reader = start_bin_run(env, preexec_fn=_as_a_background_job)
    try:
        wait_for(
            lambda: any("Мониторинг восстановлен" in line for line in output),
            180,
            "the worker's restore line",
        )
        assert fetch(f"http://127.0.0.1:{port}/healthz") is not None
        started = time.monotonic()
        os.kill(process.pid, signal.SIGINT)  # to the script only, not its group
        process.wait(timeout=20)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=5)
    print(f"\nbin/run in the background, SIGINT to its pid: stopped in {seconds:.2f} s")
    assert process.returncode == 130
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.killpg(process.pid, 0) and False, 15, "the process group to end")
