"""A Backend OutputSink for tests: records events and fails on any duplicate."""

import threading
import time


class RecordingSink:
    def __init__(self) -> None:
        self.first: dict[int, int] = {}
        self.finished: dict[int, list[int]] = {}
        self.num_finished_events = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def on_first_token(self, request_id: int, token_id: int) -> None:
        with self.lock:
            assert request_id not in self.first, f"request {request_id}: first token twice"
            self.first[request_id] = token_id

    def on_finished(self, request_id: int, token_ids: list[int]) -> None:
        with self.lock:
            assert request_id not in self.finished, f"request {request_id} finished twice"
            self.finished[request_id] = token_ids
            self.num_finished_events += 1

    def on_failed(self, error: str) -> None:
        with self.lock:
            self.failures.append(error)


def wait_for(items: list, timeout_s: float = 30.0) -> list:
    """items (filled by another thread or process) once non-empty, or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not items and time.monotonic() < deadline:
        time.sleep(0.05)
    return items
