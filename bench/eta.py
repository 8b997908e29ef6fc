"""How honest the ETA is: 2,000 simulated trainings in compressed time (no waiting).

    .venv/bin/python bench/eta.py [--trainings 2000] [--seed 29]

Run times are log-normal (σ = 0.35) around 25 min (portrait) and 8 min (style). Each
job enters fal's queue at a random position; positions drain at a rate that changes
by up to ±50 % every 10 minutes. A check every 60 s shows the ETA code what our
periodic check would see (the position, or "running" and, on one check in five, the
trainer's "step N/M" log line) and stores its estimate, exactly as
``monitoring.eta.refresh`` does; history is the trainings finished before.

At 25 %, 50 % and 75 % of each training's real duration (submit → finished) it takes
the estimate the owner would see then and measures the error of the remaining time
relative to the true remaining time. Beside it: the same trainings without any log
line (history alone), and the naive baseline (the trainer's default duration from
submit, ETA_DEFAULT_*_MINUTES). Also: how many edits of the
owner's progress message the edit rule (``notifications.progress.wants_edit``) makes
per training, that is, what the feature adds to the send rate.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from monitoring import eta  # noqa: E402
from monitoring.fal.payloads import ENDPOINTS  # noqa: E402
from monitoring.models import FalStatus, Training  # noqa: E402
from notifications.progress import Basis, wants_edit  # noqa: E402

CHECK = 60.0
MEDIANS = {"portrait": 25 * 60.0, "style": 8 * 60.0}
SIGMA = 0.35
POINTS = (0.25, 0.5, 0.75)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Queue:
    """Positions drained per minute, a new rate every 10 minutes (±50 % at most)."""

    def __init__(self, rng: random.Random, base: float) -> None:
        self.rng, self.rates, self.base = rng, [base], base

    def rate(self, t: float) -> float:
        block = int(t // 600)
        while len(self.rates) <= block:
            step = self.rates[-1] * self.rng.uniform(0.5, 1.5)
            # Kept within a sane band around the base so the walk does not wander off.
            self.rates.append(min(self.base * 3, max(self.base / 3, step)))
        return self.rates[block]

    def start_after(self, t0: float, position: int) -> float:
        """When a job that entered at ``t0`` with ``position`` ahead starts running."""
        left, t = position + 0.5, t0
        while True:
            rate = self.rate(t) / 60
            block_end = (int(t // 600) + 1) * 600
            if left <= rate * (block_end - t):
                return t + left / rate
            left -= rate * (block_end - t)
            t = block_end


def simulate(trainer: str, count: int, rng: random.Random, *, logs_seen: bool = True) -> dict:
    endpoint = ENDPOINTS[trainer]
    queue = Queue(rng, base=rng.choice([1.0, 2.0]))
    finished: deque[tuple[datetime, datetime, datetime, int]] = deque(
        maxlen=settings.ETA_HISTORY_SIZE
    )
    errors = {p: [] for p in POINTS}
    naive = {p: [] for p in POINTS}
    edits: list[int] = []
    default_total = MEDIANS[trainer]  # ETA_DEFAULT_*_MINUTES, the trainer's default
    t_submit = 0.0
    for _ in range(count):
        history = eta.history_from(finished) or eta.default_history(endpoint)
        t_submit += rng.expovariate(1 / 120)  # a new training every 2 minutes or so
        position = rng.randint(0, 25)
        t_start = queue.start_after(t_submit, position)
        run = MEDIANS[trainer] * math.exp(rng.gauss(0, SIGMA))
        t_end = t_start + run
        # The checks: what the owner would see, from submit to the end.
        seen: list[tuple[float, eta.Estimate]] = []
        # The row as the checks keep it (never saved: ``eta.refresh`` only reads and sets
        # its fields), updated exactly as ``status_checks`` does.
        row = Training(endpoint=endpoint, fal_status=FalStatus.IN_QUEUE, queue_position=position)
        basis: Basis | None = None
        last_edit = -1e9
        n_edits = 0
        check_no = 0
        t = t_submit
        while t < t_end:
            now = EPOCH + timedelta(seconds=t)
            fresh = False
            old_position, seen_seconds = row.queue_position, None
            if t < t_start:
                row.queue_position = max(0, math.ceil(position - _drained(queue, t_submit, t)))
                seen_seconds = CHECK if t > t_submit else None
            else:
                if row.fal_status != FalStatus.IN_PROGRESS:
                    row.fal_status, row.queue_position = FalStatus.IN_PROGRESS, None
                    row.started_at = EPOCH + timedelta(seconds=t_start)
                if logs_seen and check_no % 5 == 0:  # one running check in five asks for logs
                    row.logs_tail = f"Training step {int(1000 * (t - t_start) / run)}/1000"
                    fresh = True
                check_no += 1
            eta.refresh(
                row,
                history,
                now=now,
                old_position=old_position,
                seen_seconds=seen_seconds,
                logs_fresh=fresh,
            )
            found = eta.as_estimate(row) or eta.Estimate()
            phase = "late" if row.eta_late else "queue" if t < t_start else "run"
            seen.append((t, found))
            new = Basis(phase, found.at)
            if basis is None:
                basis, last_edit = new, t  # the first message (a send, not an edit)
            elif t - last_edit >= settings.OWNER_PROGRESS_EDIT_SECONDS and wants_edit(
                basis, new, now
            ):
                basis, last_edit, n_edits = new, t, n_edits + 1
            t += CHECK
        edits.append(n_edits + 1)  # + the last line after the outcome
        finished.append(
            (
                EPOCH + timedelta(seconds=t_submit),
                EPOCH + timedelta(seconds=t_start),
                EPOCH + timedelta(seconds=t_end),
                position,
            )
        )
        total = t_end - t_submit
        for share in POINTS:
            at = t_submit + share * total
            truth = t_end - at
            shown = [f for ts, f in seen if ts <= at][-1]
            remaining = shown.remaining(EPOCH + timedelta(seconds=at))
            if remaining is None:  # "taking longer than usual": no time given
                remaining = 0.0
            errors[share].append(abs(remaining - truth) / truth)
            naive_left = max(0.0, default_total - (at - t_submit))
            naive[share].append(abs(naive_left - truth) / truth)
    return {
        "errors": {p: statistics.median(v) for p, v in errors.items()},
        "naive": {p: statistics.median(v) for p, v in naive.items()},
        "edits": statistics.mean(edits),
        "edits_max": max(edits),
    }


def _drained(queue: Queue, t0: float, t1: float) -> float:
    """Positions drained between t0 and t1."""
    total, t = 0.0, t0
    while t < t1:
        block_end = min(t1, (int(t // 600) + 1) * 600)
        total += queue.rate(t) / 60 * (block_end - t)
        t = block_end
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trainings", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(
        f"{args.trainings} simulated trainings, seed {args.seed}; median |error| of the remaining time"
    )
    print(f"{'trainer':<10}{'at':>6}{'ETA':>10}{'no logs':>10}{'naive':>10}")
    verdict = True
    for trainer in ("portrait", "style"):
        seed = rng.random()
        result = simulate(trainer, args.trainings // 2, random.Random(seed))
        # The same trainings without the trainer's "step N/M" lines: history alone.
        blind = simulate(trainer, args.trainings // 2, random.Random(seed), logs_seen=False)
        for share in POINTS:
            mine, base = result["errors"][share], result["naive"][share]
            alone = blind["errors"][share]
            print(f"{trainer:<10}{share:>6.0%}{mine:>10.1%}{alone:>10.1%}{base:>10.1%}")
            if share == 0.5:
                verdict &= mine <= 0.25 and mine < base
        print(
            f"{trainer:<10} edits per training: {result['edits']:.1f} on average "
            f"(at most {result['edits_max']}), plus the first send"
        )
    print("at 50 %: ≤ 25 % and better than the baseline:", "yes" if verdict else "NO")
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
