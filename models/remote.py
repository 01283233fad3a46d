"""Models that run outside the worker: on a remote model server (`http`) or in a child
process (`subprocess`). Both speak the same JSON to it:

    request   {"id": n, "model": name, "version": version, "inputs": [input, ...]}
    answer    {"id": n, "outputs": [output, ...]}    one output (a JSON object) per input
              {"id": n, "error": "what went wrong"}  the whole batch failed

A subprocess model must echo the request's `id` (its stdout carries nothing else: a
stray line there would otherwise answer the wrong batch); an http model may leave it out.

A failed batch is retried input by input by the worker, as for any model, so one bad
input fails alone.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from models.base import Model, TransientError

log = logging.getLogger(__name__)
# Answers that say "try again later": the prediction is retried with the model's backoff.
# A plain 500 is not among them: it is as likely one bad input, which then fails alone.
_RETRY_LATER = {408, 425, 429, 502, 503, 504}
# Of the model's timeout_s (the task's soft limit, counted from the task's start), the share
# the remote call may take, so that its timeout, which is retried, comes before the limit.
_HTTP_SHARE = 0.8
# Connection attempts per request before the error counts (then as transient).
_CONNECT_RETRIES = 2
# The most a model may answer for one batch (bytes over http, characters on a child's
# stdout): a runaway answer fails its batch instead of filling the worker's memory.
MAX_ANSWER_BYTES = 64 * 2**20


def _outputs(answer, source: str, count: int) -> list[dict]:
    if not isinstance(answer, dict):
        raise RuntimeError(f"{source} answered {type(answer).__name__}, not a JSON object with `outputs`.")
    if "error" in answer:
        raise RuntimeError(f"{source} failed: {str(answer['error'])[:300]}")
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != count:
        got = len(outputs) if isinstance(outputs, list) else "no list of"
        raise RuntimeError(f"{source} answered {got} outputs for {count} inputs.")
    wrong = next((output for output in outputs if not isinstance(output, dict)), None)
    if wrong is not None:
        raise RuntimeError(f"{source} answered an output that is not a JSON object ({type(wrong).__name__}: "
                           f"{str(wrong)[:100]}); each of `outputs` is one, such as {{\"label\": 3}}.")
    return outputs


class HttpModel(Model):
    """Forwards each batch to a model server as one POST."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s * _HTTP_SHARE
        self.client: httpx.Client | None = None

    def setup(self, device: str) -> None:
        # Redirects are not followed: the operator allowed this URL's host, not wherever it points.
        self.client = httpx.Client(timeout=httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
                                   transport=httpx.HTTPTransport(retries=_CONNECT_RETRIES),
                                   follow_redirects=False)

    @property
    def server(self) -> str:
        # What callers read in a failed prediction's error: the URL, an internal address, is
        # only in the worker's log.
        return f"The server of model {self.name!r} version {self.version!r}"

    def predict(self, batch: list[dict]) -> list[dict]:
        try:
            return self._post(batch)
        except Exception as exc:
            log.warning("model %s version %s at %s: %s", self.name, self.version, self.url, exc)
            raise

    def _post(self, batch: list[dict]) -> list[dict]:
        try:
            # httpx's timeouts hold per read; a server that trickles bytes meets the soft limit.
            with self.client.stream("POST", self.url,
                                    json={"model": self.name, "version": self.version, "inputs": batch}) as response:
                status, body = response.status_code, self._read(response)
        except httpx.TimeoutException:
            raise TransientError(f"{self.server} did not answer within {self.timeout_s:g} s.") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{self.server} is unreachable ({type(exc).__name__}).") from None
        text = body[:300].decode(errors="replace")
        if status in _RETRY_LATER:
            raise TransientError(f"{self.server} answered {status}: {text[:200]}")
        if status >= 300:
            raise RuntimeError(f"{self.server} answered {status}: {text}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise RuntimeError(f"{self.server} answered something that is not JSON: {text[:100]!r}") from None
        return _outputs(answer, self.server, len(batch))

    def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise self._too_large(response.status_code)
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise self._too_large(response.status_code)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, status: int) -> RuntimeError:
        return RuntimeError(f"{self.server} answered {status} with more than {MAX_ANSWER_BYTES:,} bytes; "
                            "answers are bounded so that one cannot fill the worker's memory.")

    def memory_bytes(self) -> int:
        return 0  # it lives on another server

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def resolve_command(command: tuple[str, ...], root: Path) -> list[str]:
    """`python` is the worker's own interpreter (its virtual environment); an argument
    naming a file under the repository root becomes that file's absolute path."""
    argv = []
    for index, arg in enumerate(command):
        if index == 0 and arg in ("python", "python3"):
            argv.append(sys.executable)
        elif not os.path.isabs(arg) and (root / arg).is_file():
            argv.append(str(root / arg))
        else:
            argv.append(arg)
    return argv


class SubprocessModel(Model):
    """A long-lived child process that answers one JSON line with one JSON line. If it dies,
    the batch that was in it fails with the reason, and the next batch starts a new one."""

    def __init__(self, command: tuple[str, ...], root: Path):
        self.argv = resolve_command(command, root)
        self.root = root
        self.device = "cpu"
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.sent = 0
        self.closed = False

    def setup(self, device: str) -> None:
        self.device = device
        self._start()

    def _start(self) -> None:
        # Ferry's own settings (the admin key, the Redis URL) are none of the model's business.
        env = {key: value for key, value in os.environ.items() if not key.startswith("FERRY_")}
        env.update(FERRY_DEVICE=self.device, PYTHONUNBUFFERED="1")
        # No shell: the command is the operator's argv from the repository file, never the API's.
        self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1, cwd=self.root, env=env)
        self.starts += 1
        # The last lines it wrote on stderr go into the error when it dies: they say why.
        self.last_words: collections.deque[str] = collections.deque(maxlen=5)
        self.stderr_reader = threading.Thread(target=self._forward_stderr, args=(self.process, self.last_words),
                                              daemon=True, name=f"ferry-{self.name}-stderr")
        self.stderr_reader.start()
        log.info("model %s: started %s (pid %d)", self.name, " ".join(self.argv), self.process.pid)

    def _forward_stderr(self, process: subprocess.Popen, last_words: collections.deque) -> None:
        for line in process.stderr:
            last_words.append(line.rstrip()[:300])
            log.warning("model %s (pid %d): %s", self.name, process.pid, line.rstrip())

    def _said(self) -> str:
        """What the process that just ended last wrote on stderr, for its error."""
        self.stderr_reader.join(timeout=1)  # it reads to the end of the pipe once the process is gone
        return f" Its last words on stderr: {' | '.join(self.last_words)}" if self.last_words else ""

    def predict(self, batch: list[dict]) -> list[dict]:
        if self.closed:
            raise RuntimeError(f"Model {self.name} was unloaded.")
        if self.process is None or self.process.poll() is not None:
            self._start()
        process = self.process
        self.sent += 1
        request_id = self.sent
        try:
            process.stdin.write(json.dumps({"id": request_id, "model": self.name, "version": self.version,
                                            "inputs": batch}) + "\n")
            process.stdin.flush()
            reply = process.stdout.readline(MAX_ANSWER_BYTES)
        except BrokenPipeError:
            reply = ""
        except BaseException:
            # A time limit or a cancel mid-answer: what it writes next would answer the wrong batch.
            self._stop(process)
            raise
        if len(reply) == MAX_ANSWER_BYTES and not reply.endswith("\n"):
            self._stop(process)  # the rest of the line is still in the pipe
            raise RuntimeError(f"The model's process answered more than {MAX_ANSWER_BYTES:,} characters in one line; "
                               "it is restarted for the next.")
        if not reply:
            try:
                code = process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # closed its stdout but lives on: of no more use
                code = "none: it closed its output and was killed"
            self._stop(process)
            raise RuntimeError(f"The model's process exited (code {code}) while running this input; "
                               f"a new one is started for the next.{self._said()}")
        try:
            answer = json.loads(reply)
        except ValueError:
            self._stop(process)
            raise RuntimeError(f"The model's process wrote a line that is not JSON: {reply[:100]!r}. Hint: stdout "
                               "carries only answers, one JSON line each; write logs to stderr.") from None
        if not isinstance(answer, dict) or answer.get("id") != request_id:
            self._stop(process)
            raise RuntimeError(f"The model's process answered another request than {request_id}: it must echo each "
                               "request's id and write nothing else on stdout. It is restarted for the next.")
        return _outputs(answer, "The model's process", len(batch))

    def memory_bytes(self) -> int | None:
        """The child's resident memory (Linux)."""
        try:
            with open(f"/proc/{self.process.pid}/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, AttributeError, ValueError):
            return None

    def _stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if self.process is process:
            self.process = None

    def close(self) -> None:
        self.closed = True
        process = self.process
        if process is None:
            return
        try:
            process.stdin.close()  # end of input: a well-behaved model exits
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._stop(process)
