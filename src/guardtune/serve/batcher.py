"""The micro-batcher: one worker thread owns the models, fed by a bounded queue.

Requests put jobs on the queue and await a future. The worker takes the oldest job, then keeps
taking scoring jobs until the batch holds ``max_batch_size`` texts or ``max_wait_ms`` have passed
since the oldest job arrived. Scoring jobs for different guards can share a micro-batch; the
worker scores each guard's rows of it together. Other model work (chat generation) is a job of its
own, so the model is only ever touched by the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guardtune.serve.metrics import ServeMetrics

logger = logging.getLogger("guardtune.serve")

ScoreFn = Callable[[str, list[str]], np.ndarray]


class QueueFullError(Exception):
    """The bounded queue is full; the request should be retried later."""


class WorkerStoppedError(Exception):
    """The worker is not running (the server is shutting down)."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    guard: str | None = None
    texts: list[str] = field(default_factory=list)
    call: Callable[[], Any] | None = None
    enqueued: float = field(default_factory=time.monotonic)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the request timed out or the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class MicroBatcher:
    """Serialises all model work on one thread and batches concurrent scoring requests.

    Args:
        score: ``score(guard_name, texts) -> (len(texts), n_labels)`` probabilities; runs on the
            worker thread only.
        max_batch_size: most texts scored in one micro-batch.
        max_wait_ms: longest a job waits for company before its batch runs.
        max_queue: most jobs waiting; beyond it :meth:`score` raises :class:`QueueFullError`.
    """

    def __init__(
        self,
        score: ScoreFn,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.track_queue(self._queue.qsize)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="guardtune-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, then fail every job still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.loop.call_soon_threadsafe(_settle, job.future, None, WorkerStoppedError("server is stopping"))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def depth(self) -> int:
        return self._queue.qsize()

    # -- submitting work (from the event loop) ---------------------------------------------------

    async def score(self, guard: str, texts: list[str]) -> np.ndarray:
        """Per-label probabilities for ``texts`` from ``guard``, computed in a micro-batch."""
        result: np.ndarray = await self._submit(guard=guard, texts=list(texts))
        return result

    async def run(self, call: Callable[[], Any]) -> Any:
        """Run ``call()`` on the worker thread (for model work that is not scoring)."""
        return await self._submit(call=call)

    async def _submit(self, **kwargs: Any) -> Any:
        if not self.alive:
            raise WorkerStoppedError("the model worker is not running")
        loop = asyncio.get_running_loop()
        job = _Job(loop=loop, future=loop.create_future(), **kwargs)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            if self._metrics is not None:
                self._metrics.rejected.inc()
            raise QueueFullError(f"the request queue is full ({self._queue.maxsize} jobs)") from None
        return await job.future

    # -- the worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        pending: _Job | None = None
        while not self._stop.is_set():
            if pending is not None:
                job, pending = pending, None
            else:
                try:
                    job = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
            if job.call is not None:
                self._run_call(job)
                continue
            batch = [job]
            size = len(job.texts)
            deadline = job.enqueued + self.max_wait
            while size < self.max_batch_size:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt.call is not None:
                    pending = nxt  # runs right after this batch
                    break
                batch.append(nxt)
                size += len(nxt.texts)
            self._run_batch(batch)

    def _run_call(self, job: _Job) -> None:
        assert job.call is not None
        if job.future.done():  # see _run_batch
            return
        try:
            value, error = job.call(), None
        except Exception as exc:
            logger.exception("model job failed")
            value, error = None, exc
        job.loop.call_soon_threadsafe(_settle, job.future, value, error)

    def _run_batch(self, batch: list[_Job]) -> None:
        # A job whose request already timed out or went away is dropped unscored: under overload,
        # when timeouts happen, scoring it would only delay the requests still waiting. done() is
        # read from this thread without the loop's lock; a stale read scores the job once, harmlessly.
        batch = [job for job in batch if not job.future.done()]
        if not batch:
            return
        groups: dict[str, list[_Job]] = {}
        for job in batch:
            assert job.guard is not None
            groups.setdefault(job.guard, []).append(job)
        if self._metrics is not None:
            self._metrics.batch_size.observe(sum(len(job.texts) for job in batch))
            self._metrics.batch_guards.observe(len(groups))
        for guard, jobs in groups.items():
            self._score_jobs(guard, jobs)

    def _score_jobs(self, guard: str, jobs: list[_Job]) -> None:
        """Score ``jobs`` together; if that raises, score each job alone so only the bad ones fail.

        One request must not fail its neighbours: an input the tokenizer or model cannot take
        would otherwise hand its exception to every job that happened to share the batch.
        """
        texts = [text for job in jobs for text in job.texts]
        try:
            scores = self._score(guard, texts)
        except Exception as exc:
            if len(jobs) > 1:
                logger.warning("a batch of %d jobs for %s failed; scoring them one by one", len(jobs), guard)
                if self._metrics is not None:
                    self._metrics.batch_retries.inc()
                for job in jobs:
                    self._score_jobs(guard, [job])
                return
            logger.exception("scoring failed for guard %s", guard)
            jobs[0].loop.call_soon_threadsafe(_settle, jobs[0].future, None, exc)
            return
        start = 0
        for job in jobs:
            part = scores[start : start + len(job.texts)]
            start += len(job.texts)
            job.loop.call_soon_threadsafe(_settle, job.future, part, None)
