"""The model interface: a model author writes `setup` and `predict`; the rest has defaults."""
from __future__ import annotations

import contextlib
import json
import logging
from typing import Callable

import orjson

# (index of the item in the batch, fraction done in 0..1, partial output or None)
ProgressCallback = Callable[[int, float, "dict | None"], None]


def _ignore_progress(index: int, fraction: float, partial: dict | None = None) -> None:
    pass


log = logging.getLogger(__name__)


class TransientError(Exception):
    """Raise it from `setup` or `predict` when the failure is temporary (a remote model
    that is down, overloaded or timing out): the prediction is retried with backoff, up
    to the model's declared `retries`. Any other exception fails the prediction at once."""


class Canceled(Exception):
    """Raised by `Model.check_canceled()`: every prediction of the running batch was canceled.
    Let it propagate out of `predict`."""


def _never_canceled() -> bool:
    return False


# What counts as temporary: the model says so, or the network failed under it.
TRANSIENT_ERRORS = (TransientError, ConnectionError, TimeoutError)


def error_message(exc: BaseException, limit: int = 500) -> str:
    """A failed prediction's `error`: the exception's type and message on one line, cut
    before any traceback text the message carries, at most `limit` characters."""
    text = str(exc)
    cut = text.find("Traceback (most recent call last)")
    if cut >= 0:
        text = text[:cut]
    text = " ".join(text.split())
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message if len(message) <= limit else message[:limit - 1] + "…"


class Model:
    """Base class for in-worker models.

    `setup(device)` runs once per worker process, on first use, and loads weights.
    `predict(batch)` always receives a list of validated inputs (dicts, defaults applied)
    and must return a list of JSON-serialisable dicts of the same length.
    A long-running model may call `self.report_progress(index, fraction, partial)` from
    `predict`; whoever follows that prediction sees it at once.
    """

    name: str = ""
    version: str = ""
    _progress: ProgressCallback = staticmethod(_ignore_progress)
    _canceled = staticmethod(_never_canceled)

    def report_progress(self, index: int, fraction: float, partial: dict | None = None) -> None:
        """Item `index` of the current batch is `fraction` (0..1) done; `partial`, when
        given, is a JSON-serialisable output so far (shown to watchers, never cached).
        Also a cancellation point: see `check_canceled`."""
        self._progress(index, fraction, partial)
        self.check_canceled()

    def check_canceled(self) -> None:
        """Call it between the steps of a long `predict`: once every prediction of the batch
        has been canceled (DELETE /predictions/{id}), it raises `Canceled`, which stops the
        run. Only models declared `cancelable: true` are asked; it is cheap to call often."""
        if self._canceled():
            raise Canceled("Canceled while running.")

    def setup(self, device: str) -> None:
        """Load weights onto `device` ("cpu", "cuda:0", ...)."""

    def memory_bytes(self) -> int | None:
        """What the loaded model occupies, if it knows; else the pool measures the process's
        growth while `setup` ran."""
        return None

    def close(self) -> None:
        """Let go of what `setup` took (connections, child processes); the pool calls it
        when it unloads the model. Memory is freed once the model is no longer referenced."""

    def predict(self, batch: list[dict]) -> list[dict]:
        raise NotImplementedError(
            f"{type(self).__name__}.predict is missing. "
            "Hint: implement predict(self, batch: list[dict]) -> list[dict]."
        )


def checked_predict(model: Model, inputs: list[dict]) -> list[dict]:
    """`model.predict(inputs)`, with a loud, helpful error when the outputs are malformed."""
    outputs = model.predict(inputs)
    name = type(model).__name__
    if not isinstance(outputs, list) or len(outputs) != len(inputs):
        got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
        raise TypeError(
            f"{name}.predict returned {got} outputs for {len(inputs)} inputs. "
            "Hint: predict must return a list with one output per input."
        )
    for output in outputs:
        if not isinstance(output, dict):
            raise TypeError(f"{name}.predict must return dicts, got {type(output).__name__}.")
    return outputs


def encode_output(output: dict, what: str = "The model's output", must: str = "predict must return dicts") -> str:
    """One output as strict JSON; an array, a numpy scalar that is not a float64 (a subclass
    of float), NaN or infinity fails here, loudly.

    orjson writes it at a tenth of the stdlib's cost, which for a small model is a sizeable
    share of a batch's. What orjson refuses (keys that are not strings, numpy scalars, ints
    past 64 bits, and, by the options below, dates and dataclasses) or would write as `null`
    (NaN and infinities, besides None) goes to the stdlib, which decides as it always has.
    The one widening: orjson writes a UUID or an enum member as its value."""
    try:
        encoded = orjson.dumps(output, option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS)
        if b"null" not in encoded:
            return encoded.decode()
    except TypeError:
        pass
    try:
        return json.dumps(output, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} is not plain JSON ({exc}). Hint: {must} of str, int, float, bool, None, lists and "
            "dicts; call .tolist() on arrays and leave out NaN."
        ) from None


@contextlib.contextmanager
def reporting(model: Model, progress: ProgressCallback | None, offset: int = 0):
    """Route the model's `report_progress` calls to `progress` while it runs, with item
    indices shifted by `offset` (when a batch is retried item by item)."""
    if progress is None:
        yield
        return
    model._progress = lambda index, fraction, partial=None: progress(offset + index, fraction, partial)
    try:
        yield
    finally:
        del model._progress


@contextlib.contextmanager
def canceling(model: Model, canceled) -> None:
    """Let the model's `check_canceled` ask `canceled()` while it runs."""
    model._canceled = canceled
    try:
        yield
    finally:
        del model._canceled


def predict_isolated(model: Model, inputs: list[dict], fatal: tuple = (),
                     progress: ProgressCallback | None = None) -> list[tuple[str | None, str | None]]:
    """`(encoded output, None)` or `(None, error)` per input: one forward pass for the
    batch, and if that fails, item by item, so that one bad input fails alone. Exceptions
    in `fatal` (a time limit, say) are not retried item by item. `progress` receives the
    model's progress reports, with indices into `inputs`."""
    if len(inputs) > 1:
        try:
            with reporting(model, progress):
                return [(encode_output(output), None) for output in checked_predict(model, inputs)]
        except fatal:
            raise
        except Exception as exc:
            # Said, or a model that cannot batch would lose batching without a word.
            log.warning("model %s: its batch of %d failed (%s); running its inputs one by one",
                        getattr(model, "name", type(model).__name__), len(inputs), error_message(exc))
    results: list[tuple[str | None, str | None]] = []
    for index, item in enumerate(inputs):
        try:
            with reporting(model, progress, offset=index):
                results.append((encode_output(checked_predict(model, [item])[0]), None))
        except fatal:
            raise
        except Exception as exc:
            results.append((None, error_message(exc)))
    return results
