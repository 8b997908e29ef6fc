"""Benchmark: keeping trained files, against ``curl -o`` of the same files.

    .venv/bin/python bench/keep_files.py [--files 20] [--mb 90] [--rounds 4] [--dir /dev/shm]

Starts the fal emulator (a separate process) serving LoRA files of ``--mb`` MB over
HTTPS, creates a scratch PostgreSQL database (server of DATABASE_URL) with ``--files``
completed trainings pointing at them, and in each round:

- ``curl``: ``curl -o`` of every file, one after the other (the floor: a C client
  writing to disk; the files stay until the round ends, like the worker's);
- ``worker``: ``monitoring.files.keep`` for every training, in its own process, the way
  the django-q2 task runs: stream, SHA-256, write under a temporary name, move to the
  final name in the filesystem storage, record the row.

It prints MB/s of each and the worker process's peak memory growth (VmHWM after the
copies minus VmRSS before them, with the peak reset first). Targets: the worker at
≥ 0.7× curl's throughput and ≤ 64 MB of growth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()
    import logging

    logging.getLogger("monitoring").setLevel(logging.WARNING)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _fill(base_url: str, count: int, size: int, run: str) -> list[int]:
    from django.core.management import call_command
    from django.utils import timezone

    from monitoring import files
    from monitoring.models import Avatar, AvatarStatus, FalStatus, Owner, Training

    call_command("migrate", verbosity=0)
    owner, _ = Owner.objects.get_or_create(telegram_id=42)
    ids = []
    for index in range(count):
        request_id = f"bench-{run}-{index:03d}"
        url = f"{base_url}/fal-files/{request_id}/pytorch_lora_weights.safetensors"
        avatar = Avatar.objects.create(
            owner=owner,
            name=f"a{index}",
            trigger_word="b",
            images_url="https://bench/x.zip",
            status=AvatarStatus.COMPLETED,
        )
        training = Training.objects.create(
            avatar=avatar,
            endpoint="fal-ai/flux-lora-portrait-trainer",
            fal_request_id=request_id,
            fal_status=FalStatus.COMPLETED,
            finished_at=timezone.now(),
            outcome="completed",
            lora_url=url,
            result={"diffusers_lora_file": {"url": url, "file_size": size}},
        )
        Avatar.objects.filter(pk=avatar.pk).update(current_training=training)
        files.plan(training)
        ids.append(training.pk)
    return ids


def _keep(ids: list[int]) -> dict:
    import requests  # noqa: F401 (imported before the baseline, as in a running worker)

    from monitoring import files
    from monitoring.models import FileState, KeptFile

    # The baseline: a worker that has run tasks before (imports done, connection open).
    KeptFile.objects.count()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    began = time.perf_counter()
    for training_id in ids:
        files.keep(training_id, due_only=False)
    wall = time.perf_counter() - began
    kept = KeptFile.objects.filter(training_id__in=ids, state=FileState.KEPT)
    return {
        "wall": wall,
        "bytes": sum(kept.values_list("size", flat=True)),
        "kept": kept.count(),
        "growth_mb": (_status_kb("VmHWM") - before) / 1024,
        "rss_mb": before / 1024,
    }


def _child(env: dict[str, str], *args: str) -> dict | list:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(env), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _curl(base_url: str, cert: str, run: str, count: int, out_dir: Path) -> dict:
    began = time.perf_counter()
    total = 0
    for index in range(count):
        target = out_dir / f"{index}.bin"
        subprocess.run(
            [
                "curl",
                "-sS",
                "--fail",
                "--cacert",
                cert,
                "-o",
                str(target),
                f"{base_url}/fal-files/bench-{run}-{index:03d}/pytorch_lora_weights.safetensors",
            ],
            check=True,
        )
        total += target.stat().st_size
    # Kept until the round ends, like the worker's copies (deleting each at once would
    # spare curl the disk writes the worker pays for).
    return {"wall": time.perf_counter() - began, "bytes": total}


def main() -> None:
    from bench.scratch import create_database, drop_database

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=int, default=90, help="size of each LoRA file, MB")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--dir",
        help="where both write (default: the system's temporary directory; /dev/shm "
        "takes the disk out of the comparison)",
    )
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    size = args.mb * 1024 * 1024
    server = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")

    with tempfile.TemporaryDirectory(prefix="bench-keep-files-", dir=args.dir) as state:
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fakes.fal_emulator",
                "--state-dir",
                state,
                "--no-webhooks",
                "--file-size",
                str(size),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        name, url = create_database(server, "bench_keep_files")
        rows = []
        try:
            env_file = Path(state) / "emulator.env"
            started = time.perf_counter()
            while not env_file.exists():
                if emulator.poll() is not None or time.perf_counter() - started > 60:
                    raise SystemExit("the fal emulator did not start")
                time.sleep(0.1)
            env = dict(
                line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
            )
            base_url = "https://" + env["FAL_QUEUE_RUN_HOST"]
            env.update(
                DJANGO_SETTINGS_MODULE="avatarsite.settings",
                DATABASE_URL=url,
                DEBUG="1",
                FAL_KEY="bench-key-id:bench-key-secret",
                NOTIFICATION_BACKEND="locmem",
                AVATAR_FILES_ROOT=str(Path(state) / "avatar-files"),
                AVATAR_FILE_DOWNLOAD_SECONDS="600",
            )
            out_dir = Path(state) / "curl"
            out_dir.mkdir()
            for round_no in range(args.rounds):
                run = f"r{round_no}"
                ids = _child(env, "fill", base_url, str(args.files), str(size), run)

                # Alternating who goes first. Each phase keeps what it wrote until it ends; then its files go and
                # the page cache is clean (os.sync) before the other phase starts, so
                # neither pays for the gigabytes the other just wrote.
                def curl_phase(run: str = run) -> dict:
                    os.sync()
                    figures = _curl(base_url, env["SSL_CERT_FILE"], run, args.files, out_dir)
                    shutil.rmtree(out_dir)
                    out_dir.mkdir()
                    return figures

                def worker_phase(ids: list = ids) -> dict:
                    os.sync()
                    figures = _child(env, "keep", json.dumps(ids))
                    shutil.rmtree(Path(state) / "avatar-files")
                    return figures

                if round_no % 2 == 0:
                    curl, worker = curl_phase(), worker_phase()
                else:
                    worker, curl = worker_phase(), curl_phase()
                assert isinstance(worker, dict) and worker["kept"] == args.files, worker
                rows.append((run, curl, worker))
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
            drop_database(server, name)

    print(
        f"Keeping {args.files} LoRA files of {args.mb} MB from the fal emulator (HTTPS, "
        f"loopback) into the filesystem storage in {args.dir or tempfile.gettempdir()}, "
        "vs. curl -o of the same files there"
    )
    print(f"(CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    header = (
        f"{'round':<6} {'curl MB/s':>10} {'worker MB/s':>12} {'ratio':>6} "
        f"{'worker RSS MB':>14} {'peak growth MB':>15}"
    )
    print(header)
    print("-" * len(header))
    for run, curl, worker in rows:
        curl_rate = curl["bytes"] / 1e6 / curl["wall"]
        worker_rate = worker["bytes"] / 1e6 / worker["wall"]
        print(
            f"{run:<6} {curl_rate:>10.0f} {worker_rate:>12.0f} {worker_rate / curl_rate:>6.2f} "
            f"{worker['rss_mb']:>14.0f} {worker['growth_mb']:>15.1f}"
        )
    curl_total = sum(c["bytes"] for _, c, _ in rows) / 1e6 / sum(c["wall"] for _, c, _ in rows)
    worker_total = sum(w["bytes"] for _, _, w in rows) / 1e6 / sum(w["wall"] for _, _, w in rows)
    print(
        f"{'all':<6} {curl_total:>10.0f} {worker_total:>12.0f} "
        f"{worker_total / curl_total:>6.2f} {'':>14} {max(w['growth_mb'] for *_, w in rows):>15.1f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _django(json.loads(sys.argv[2]))
        mode = sys.argv[3]
        if mode == "fill":
            print(json.dumps(_fill(sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])))
        else:
            print(json.dumps(_keep(json.loads(sys.argv[4]))))
    else:
        main()
