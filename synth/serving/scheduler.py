"""One model thread per replica, fed by a queue that merges everything waiting.

`@serve.batch` gathers requests that arrive within `batch_wait_timeout_s` (up to
`max_batch_size`), but it keeps cutting small batches on that timer while the model is busy, and
they then queue behind each other. The deployment's batch handler therefore only hands its jobs
to this scheduler and returns their futures at once; the scheduler runs one model call at a
time and, when the model frees up, takes everything queued since (FIFO, up to `max_requests`
requests and `max_cost` rows x network evaluations), so batches grow with load ("continuous
batching") and shrink to one request when idle. With `max_requests=1` nothing is merged.

A job whose caller goes away (its future cancelled, `job.cancelled`) is dropped from the queue, or
stops at the model's next batch; while the model thread still holds it (`job.busy`) the replica
keeps counting it, and `on_release(job)` lets go of it when the thread does.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from typing import Any, Callable

from synth.serving.batching import Job

RunFn = Callable[[list[Job]], tuple[list[Any], list[Any]]]


class ModelScheduler:
    def __init__(self, run: RunFn, *, max_requests: int, max_cost: int, executor: Executor | None = None,
                 on_stats: Callable[[list[Any]], None] | None = None,
                 on_release: Callable[[Job], None] | None = None):
        self._run = run
        self.max_requests = max_requests
        self.max_cost = max_cost
        self._executor = executor
        self._on_stats = on_stats
        self._on_release = on_release
        self._queue: deque[tuple[Job, asyncio.Future]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.runs = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, jobs: list[Job]) -> list[asyncio.Future]:
        """Queue `jobs`; each future resolves to that job's result (bytes or an exception)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._serve())
        futures = []
        for job in jobs:
            fut = loop.create_future()
            self._queue.append((job, fut))
            futures.append(fut)
        self._wakeup.set()
        return futures

    def close(self) -> None:
        """Finish what is queued, then stop the serving task (the model was unloaded); a later submit
        still runs."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    def _take(self) -> list[tuple[Job, asyncio.Future]]:
        taken: list[tuple[Job, asyncio.Future]] = []
        cost = 0
        while self._queue and len(taken) < self.max_requests:
            job, fut = self._queue[0]
            if fut.done() or job.cancelled:  # the caller went away
                self._queue.popleft()
                continue
            c = job.rows * job.row_cost
            if taken and cost + c > self.max_cost:
                break
            taken.append(self._queue.popleft())
            cost += c
        return taken

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken = self._take()
            if not taken:
                continue
            jobs = [job for job, _ in taken]
            for job in jobs:
                job.busy = True
            try:
                results, stats = await loop.run_in_executor(self._executor, self._run, jobs)
            except Exception as e:  # noqa: BLE001 - every job of the run fails with it
                results, stats = [e] * len(jobs), []
            self.runs += 1
            for (job, fut), res in zip(taken, results):
                job.busy = False
                if not fut.done():
                    fut.set_result(res)
                elif self._on_release is not None:  # its caller left while the model held it
                    self._on_release(job)
            if self._on_stats is not None and stats:
                self._on_stats(stats)
