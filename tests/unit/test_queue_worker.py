"""QueueWorkerBackend (the hf backend's base): batches are cut from whole submits."""

from __future__ import annotations

import queue
import time

import pytest

from harness.backends.base import GenerationRequest, QueueWorkerBackend
from tests.unit.sinks import RecordingSink


class SlowQueue(queue.Queue):
    """Each put takes a while, so the worker could wake up between the items of one submit."""

    def put(self, item, block=True, timeout=None):  # noqa: ANN001
        super().put(item, block, timeout)
        time.sleep(0.02)


class Recorder(QueueWorkerBackend):
    name = "recorder"

    def __init__(self, max_batch: int) -> None:
        super().__init__(max_batch)
        self.batches: list[list[int]] = []

    def _serve(self, batch: list[GenerationRequest]) -> None:
        self.batches.append([r.request_id for r in batch])


def test_batches_do_not_depend_on_when_the_worker_wakes():
    backend = Recorder(max_batch=4)
    backend._queue = SlowQueue()
    backend.start(RecordingSink())
    backend.submit([GenerationRequest(i, [5, 6], max_new_tokens=4) for i in range(6)])
    backend.stop()
    assert backend.batches == [[0, 1, 2, 3], [4, 5]]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_failure_is_reported_to_the_sink_and_raised():
    # the worker re-raises after reporting (its traceback on stderr); that thread death is the point
    from harness.backends.base import BackendError

    class Dying(QueueWorkerBackend):
        name = "dying"

        def _serve(self, batch: list[GenerationRequest]) -> None:
            raise RuntimeError("out of memory")

    backend, sink = Dying(max_batch=4), RecordingSink()
    backend.start(sink)
    backend.submit([GenerationRequest(request_id=1, prompt_token_ids=[3], max_new_tokens=2)])
    with pytest.raises(BackendError, match="out of memory"):
        backend.stop()
    assert sink.failures == ["dying backend worker failed: RuntimeError('out of memory')"]
