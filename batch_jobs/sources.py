"""Where a batch job's inputs come from: JSONL or CSV files, or the inputs asked for most.

Every source yields `(line, text)` pairs, the text a row's JSON, unparsed, or a
`SourceRowError` for a row that cannot even be read. The planner only splits the rows into
chunks; the batch workers parse and check each with `validated_rows`, so that the costly
part of reading a source runs on every worker at once, and a bad row is counted and
reported, never fatal.
"""
from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import threading

import orjson
from pathlib import Path
from typing import Iterator

from marshmallow import Schema, ValidationError

from tasks.flushing import PeriodicFlush

from models.cache import canonical_json
from models.declaration import ModelSpec

log = logging.getLogger(__name__)

SOURCE_TYPES = ("jsonl", "csv", "popular")


class SourceError(ValueError):
    """The source itself is unusable (missing file, path outside the input folder...)."""


def resolve_path(path: str, base: Path, *, confined: bool) -> Path:
    """A source file's path; `confined` (jobs from the API) keeps it inside `base`."""
    if "\0" in path:
        raise SourceError("The path holds a NUL character.")
    candidate = Path(path)
    if confined:
        if candidate.is_absolute():
            raise SourceError("Give the path relative to the batch input folder.")
        candidate = (base / candidate).resolve()
        if base.resolve() not in candidate.parents:
            raise SourceError("The path leaves the batch input folder.")
    elif not candidate.is_absolute():
        candidate = (base / candidate) if (base / candidate).exists() else candidate.resolve()
    if not candidate.is_file():
        raise SourceError(f"No such file: {path}")
    return candidate


def jsonl_rows(path: Path) -> Iterator[tuple[int, "str | SourceRowError"]]:
    """Each line that is not blank; one that is not UTF-8 is a bad row, not a bad file."""
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            try:
                text = line.decode("utf-8").strip(_JSON_SPACE)
            except UnicodeDecodeError as exc:
                yield line_no, SourceRowError(f"Not valid UTF-8 (byte {exc.start + 1} of the line).")
                continue
            if text:
                yield line_no, text


_JSON_SPACE = " \t\r\n"


def csv_rows(path: Path, spec: ModelSpec) -> Iterator[tuple[int, "str | SourceRowError"]]:
    """CSV cells are text: numbers are parsed, booleans are true/false, arrays are JSON, and
    empty cells are absent (so defaults apply). Each row is passed on as a JSON object, under
    the line its record starts on; blank lines are skipped."""
    kinds = {field.name: field.type for field in spec.inputs}
    # A cell may be as long as the longest input a model accepts (an image), not csv's 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
    # Bytes that are not UTF-8 become lone surrogates here, so that they fail their row only.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
        if header is None:
            return
        if "" in header or len(set(header)) < len(header):
            raise SourceError(f"The header row must name each column once: {','.join(header)[:200]}")
        while True:
            line_no = reader.line_num + 1
            try:
                cells = next(reader, None)
            except csv.Error as exc:  # a cell past MAX_CELL, say: the reader goes on at the next line
                yield line_no, SourceRowError(f"Not readable as CSV: {exc}.")
                continue
            if cells is None:
                return
            if not cells:
                continue
            yield line_no, _row_text(header, cells, kinds)


MAX_CELL = 16 * 2**20


def _row_text(header: list[str], cells: list[str], kinds: dict) -> "str | SourceRowError":
    # Empty cells past the last column (a trailing comma, as spreadsheets write) are nothing.
    if len(cells) > len(header) and not any(cells[len(header):]):
        cells = cells[:len(header)]
    if len(cells) > len(header):
        return SourceRowError(f"The row has {len(cells)} cells; the header names {len(header)} columns.")
    try:
        row = {name: _cell(name, kinds.get(name), value) for name, value in zip(header, cells) if value != ""}
        text = json.dumps(row, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # fails on a lone surrogate: a byte that was not UTF-8
        return text
    except UnicodeEncodeError:
        return SourceRowError("Not valid UTF-8.")
    except ValueError as exc:
        return SourceRowError(str(exc))


def _cell(name: str, kind: str | None, value: str):
    try:
        return _typed(kind, value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Column {name!r}: not valid JSON ({exc}).") from None
    except ValueError as exc:
        raise ValueError(f"Column {name!r}: {exc}") from None


def _typed(kind: str | None, value: str):
    if kind == "integer":
        return int(value)
    if kind == "number":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number.")
        return number
    if kind == "array":
        return json.loads(value)
    if kind == "boolean":
        lowered = value.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{value!r} is not a boolean; write true or false.")
        return lowered == "true"
    return value


def popular_key(prefix: str, model: str, version: str) -> str:
    return f"{prefix}popular:{model}:{version}"


def popular_members(redis, prefix: str, spec: ModelSpec, top_n: int) -> list[str]:
    """The `top_n` inputs asked for most, as canonical JSON, most asked first."""
    return redis.zrevrange(popular_key(prefix, spec.name, spec.version), 0, top_n - 1)


class SourceRowError:
    """A row that could not even be parsed; it carries the reason."""

    def __init__(self, message: str):
        self.message = message


def validated_rows(rows, schema: Schema):
    """Yield `(line, validated_input, None)` or `(line, None, error message)` for each
    `(line, text)` row of a chunk (the planner keeps a `SourceRowError` out of chunks)."""
    # Same result and messages as `load`, a fraction of its cost (models.schemas.InputSchema).
    load = getattr(schema, "load_fast", schema.load)
    for line_no, text in rows:
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield line_no, None, f"Not valid JSON: {exc}."
            continue
        if not isinstance(raw, dict):
            yield line_no, None, "Each row must be a JSON object of the model's input fields."
            continue
        try:
            yield line_no, load(raw), None
        except ValidationError as exc:
            yield line_no, None, json.dumps(exc.messages, sort_keys=True)


class PopularityCounter:
    """Counts what the API is asked for, per model, in bounded memory (a trimmed sorted set).

    The API counts with `add`: in the process, flushed to Redis by a thread every
    `flush_every_s` (or at once when `max_pending` distinct inputs are waiting, and when the
    process exits), so that a cache hit writes nothing to Redis and waits for no fsync.
    Popularity is approximate anyway: a process that dies loses at most its last second of
    counts, and a flush that fails (Redis away) is dropped, not retried."""

    def __init__(self, prefix: str, max_entries: int, max_input_bytes: int, *, flush_every_s: float = 1.0,
                 max_pending: int = 4096):
        self.prefix = prefix
        self.max_entries = max_entries
        self.max_input_bytes = max_input_bytes
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, list]] = {}  # sorted set -> input's id -> [n, member]
        self._distinct = 0
        self._redis = None
        self._flusher = PeriodicFlush(self._write_waiting, flush_every_s, "popularity counts")

    def add(self, redis, model: str, version: str, validated_input: dict, ident: str) -> None:
        """Count one request for `validated_input` (`ident` names it: its cache key) in the
        process. At most `max_pending` inputs of at most `max_input_bytes` each wait in memory;
        a popular input is encoded once per flush, not once per request."""
        key = popular_key(self.prefix, model, version)
        with self._lock:
            self._redis = redis
            self._flusher.ensure_running()
            inputs = self._pending.setdefault(key, {})
            seen = inputs.get(ident)
            if seen is not None:
                seen[0] += 1
                return
        member = canonical_json(validated_input)
        if len(member) > self.max_input_bytes:
            return
        with self._lock:
            seen = self._pending.setdefault(key, {}).setdefault(ident, [0, member])
            if seen[0] == 0:
                self._distinct += 1
            seen[0] += 1
            full = self._distinct >= self.max_pending
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the counts gathered so far: one pipeline, one round trip."""
        self._flusher.flush()

    def _write_waiting(self) -> None:
        with self._lock:
            pending, self._pending, self._distinct = self._pending, {}, 0
            redis = self._redis
        if not pending or redis is None:
            return
        pipe = redis.pipeline(transaction=False)
        for key, inputs in pending.items():
            for n, member in inputs.values():
                pipe.zincrby(key, n, member)
            pipe.zremrangebyrank(key, 0, -(self.max_entries + 1))
        pipe.execute()

