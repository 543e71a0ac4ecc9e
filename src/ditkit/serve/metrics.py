"""Counters for GET /metrics, written as Prometheus text exposition by hand (a few lines;
prometheus_client would be one more dependency for four metrics)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RATE_WINDOW_S = 60.0


class Metrics:
    """Jobs finished by state, the job latency histogram (submit to finish) and images per second
    over the last minute; queue lengths are read from the workers when rendering."""

    def __init__(self):
        self._lock = threading.Lock()
        self.finished_by_state: Counter = Counter()
        self.latency_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum, self.latency_n = 0.0, 0
        self.images_total = 0
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, images) of finished batches

    def finished(self, job) -> None:
        latency = max(time.time() - job.created, 0.0)
        with self._lock:
            self.finished_by_state[job.state] += 1
            self.latency_sum += latency
            self.latency_n += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if latency <= bound:
                    self.latency_counts[i] += 1

    def batch_done(self, images: int, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.images_total += images
            self._recent.append((now, images))
            while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
                self._recent.popleft()

    def render(self, queue_lengths: dict[str, int], active_by_state: dict[str, int]) -> str:
        with self._lock:
            rate = sum(n for _, n in self._recent) / RATE_WINDOW_S
            lines = ["# HELP ditkit_queue_length Jobs waiting in a model's queue.", "# TYPE ditkit_queue_length gauge"]
            lines += [f'ditkit_queue_length{{model="{m}"}} {n}' for m, n in sorted(queue_lengths.items())]
            lines += ["# HELP ditkit_jobs Jobs held now, by state.", "# TYPE ditkit_jobs gauge"]
            lines += [f'ditkit_jobs{{state="{s}"}} {active_by_state.get(s, 0)}'
                      for s in ("queued", "running", "completed", "failed", "cancelled")]
            lines += ["# HELP ditkit_jobs_finished_total Jobs finished since start, by state.",
                      "# TYPE ditkit_jobs_finished_total counter"]
            lines += [f'ditkit_jobs_finished_total{{state="{s}"}} {self.finished_by_state.get(s, 0)}'
                      for s in ("completed", "failed", "cancelled")]
            lines += ["# HELP ditkit_job_latency_seconds Seconds from submission to the end of a job.",
                      "# TYPE ditkit_job_latency_seconds histogram"]
            lines += [f'ditkit_job_latency_seconds_bucket{{le="{b}"}} {c}' for b, c in zip(LATENCY_BUCKETS, self.latency_counts)]
            lines += [f'ditkit_job_latency_seconds_bucket{{le="+Inf"}} {self.latency_n}',
                      f"ditkit_job_latency_seconds_sum {self.latency_sum:.6f}",
                      f"ditkit_job_latency_seconds_count {self.latency_n}",
                      "# HELP ditkit_images_total Images made since start.", "# TYPE ditkit_images_total counter",
                      f"ditkit_images_total {self.images_total}",
                      "# HELP ditkit_images_per_second Images made per second over the last minute.",
                      "# TYPE ditkit_images_per_second gauge", f"ditkit_images_per_second {rate:.4f}"]
        return "\n".join(lines) + "\n"
