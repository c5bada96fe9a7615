"""Readiness across a service's workers.

BentoML answers /readyz from whichever worker the kernel hands the connection to, each asking its own
`__is_ready__`. With `SM_SERVICE_WORKERS=2`, one worker that had opened its indexes made /readyz answer 200
while its sibling was still opening them, and a load balancer then sent that sibling its share of traffic.
So each worker marks itself ready in a folder that only it and its siblings share (named by the serving
process that spawned them: its PID and start time), and a worker reports ready only once every worker has.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from pathlib import Path

from pipelines.llm.servers import start_ticks


class Readiness:
    """`mark_ready()` when this worker is; `all_ready()` once all `workers` have. One worker, or a service
    running outside `bentoml serve` (no worker index), needs no folder: it is all the workers there are."""

    def __init__(self, workers: int, worker_index: int | None) -> None:
        self.workers = workers
        self.folder: Path | None = None
        self._ready = False
        if workers <= 1 or worker_index is None:
            return
        parent = os.getppid()  # BentoML's arbiter: every worker of one `bentoml serve` shares it
        self.folder = Path(tempfile.gettempdir()) / f"stratmaster-ready-{parent}-{start_ticks(parent)}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._mine = self.folder / f"worker-{worker_index}"
        self._mine.unlink(missing_ok=True)  # a worker restarted in a dead one's place is not ready yet
        atexit.register(self._leave)

    def mark_ready(self) -> None:
        self._ready = True
        if self.folder is not None:
            self._mine.touch()

    def all_ready(self) -> bool:
        if not self._ready or self.folder is None:
            return self._ready
        return all((self.folder / f"worker-{i}").exists() for i in range(1, self.workers + 1))

    def _leave(self) -> None:
        assert self.folder is not None
        self._mine.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: a sibling is still running
            self.folder.rmdir()  # the last worker out removes the folder
