"""Streaming reader of LoadGen's mlperf_log_accuracy.json: one entry at a time, first entry per
qsl_idx kept, hex payload -> token ids. Strict JSON (what json.load accepts), flat memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AccuracyInputError

_READ_BYTES = 1 << 20
_WHITESPACE = " \t\n\r"
DTYPES = {"int32": np.dtype("<i4"), "int64": np.dtype("<i8")}


@dataclass(frozen=True)
class LogSample:
    """One kept (first-seen) response of the accuracy log."""

    qsl_idx: int
    token_ids: np.ndarray  # [num_tokens] int32/int64, EOS and anything else LoadGen logged


class _JsonArrayStream:
    """Yields the elements of a top-level JSON array from a text file without loading it all."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._decoder = json.JSONDecoder()
        try:
            self._file = open(path, encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise AccuracyInputError(f"{path}: cannot open the accuracy log ({exc})") from None
        self._buf = ""
        self._pos = 0
        self._offset = 0  # characters consumed before _buf[0]
        self._eof = False

    def close(self) -> None:
        self._file.close()

    def _fail(self, problem: str) -> AccuracyInputError:
        return AccuracyInputError(f"{self._path}: {problem}")

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = self._file.read(_READ_BYTES)
        except UnicodeDecodeError as exc:
            raise self._fail(
                f"not UTF-8 text ({exc.reason}); is it really the accuracy log?"
            ) from None
        if not chunk:
            self._eof = True
            return False
        if self._pos > _READ_BYTES:
            self._offset += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += chunk
        return True

    def _next_char(self) -> str:
        """Skips whitespace; returns the next character ('' at end of file) without eating it."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def _value(self) -> object:
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._fill():
                    continue  # the value may only be cut by the read boundary
                where = self._offset + exc.pos
                raise self._fail(
                    f"not valid JSON at character {where} ({exc.msg}); the log is truncated "
                    "or corrupt: rerun the AccuracyOnly test"
                ) from None
            self._pos = end
            return value

    def __iter__(self) -> Iterator[object]:
        first = self._next_char()
        if first == "":
            raise self._fail("the file is empty; rerun the AccuracyOnly test")
        if first != "[":
            raise self._fail(f"expected a JSON list of LoadGen responses, found {first!r}")
        self._pos += 1
        if self._next_char() == "]":
            self._pos += 1
        else:
            while True:
                if self._next_char() == "":
                    raise self._fail("truncated JSON (the list is not closed)")
                yield self._value()
                sep = self._next_char()
                if sep == ",":
                    self._pos += 1
                    continue
                if sep == "]":
                    self._pos += 1
                    break
                if sep == "":
                    raise self._fail("truncated JSON (the list is not closed)")
                raise self._fail(
                    f"not valid JSON at character {self._offset + self._pos} "
                    f"(expected ',' or ']', found {sep!r})"
                )
        if self._next_char() != "":
            raise self._fail(
                f"not valid JSON: extra data after the list at character {self._offset + self._pos}"
            )


def _token_ids(path: Path, n: int, entry: object, dtype: np.dtype) -> tuple[int, np.ndarray]:
    if not isinstance(entry, dict):
        raise AccuracyInputError(f"{path}: entry {n} is {type(entry).__name__}, not an object")
    qsl_idx = entry.get("qsl_idx")
    data = entry.get("data")
    if isinstance(qsl_idx, bool) or not isinstance(qsl_idx, int):
        raise AccuracyInputError(f"{path}: entry {n} has no integer 'qsl_idx' ({qsl_idx!r})")
    if not isinstance(data, str):
        raise AccuracyInputError(f"{path}: entry {n} (qsl_idx {qsl_idx}) has no string 'data'")
    if len(data) % 2:
        raise AccuracyInputError(
            f"{path}: entry {n} (qsl_idx {qsl_idx}): hex 'data' has odd length {len(data)}"
        )
    try:
        raw = bytes.fromhex(data)
    except ValueError as exc:
        raise AccuracyInputError(
            f"{path}: entry {n} (qsl_idx {qsl_idx}): 'data' is not hex ({exc})"
        ) from None
    if len(raw) % dtype.itemsize:
        raise AccuracyInputError(
            f"{path}: entry {n} (qsl_idx {qsl_idx}): {len(raw)} bytes is not a whole number of "
            f"{dtype.name} token ids; fix: pass the dtype the SUT logged (--dtype)"
        )
    return qsl_idx, np.frombuffer(raw, dtype=dtype)


def iter_log_samples(
    log_path: str | os.PathLike[str], num_dataset_rows: int, dtype: str = "int32"
) -> Iterator[LogSample]:
    """Yields the first entry of each qsl_idx in log order, as the reference script keeps them.

    Raises AccuracyInputError for a missing/invalid/truncated/empty log, bad hex, or a qsl_idx
    outside [0, num_dataset_rows).
    """
    path = Path(log_path)
    if dtype not in DTYPES:
        raise AccuracyInputError(f"unknown token dtype {dtype!r}; choose one of {list(DTYPES)}")
    np_dtype = DTYPES[dtype]
    if not path.is_file():
        raise AccuracyInputError(f"{path}: accuracy log not found")
    stream = _JsonArrayStream(path)
    seen: set[int] = set()
    num_entries = 0
    try:
        for num_entries, entry in enumerate(stream, start=1):
            qsl_idx, ids = _token_ids(path, num_entries - 1, entry, np_dtype)
            if not 0 <= qsl_idx < num_dataset_rows:
                raise AccuracyInputError(
                    f"{path}: entry {num_entries - 1} has qsl_idx {qsl_idx}, outside the "
                    f"dataset's {num_dataset_rows} rows; fix: score with the dataset the run used"
                )
            if qsl_idx in seen:
                continue
            seen.add(qsl_idx)
            yield LogSample(qsl_idx, ids)
    finally:
        stream.close()
    if num_entries == 0:
        raise AccuracyInputError(f"{path}: the log has no responses; rerun the AccuracyOnly test")
