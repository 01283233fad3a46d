"""A `subprocess` model: counts words, sentences and characters of a text.

Any program can be a subprocess model. Ferry starts it once per worker process and keeps
it running; it reads one JSON line per batch on stdin and writes one JSON line back:

    in   {"id": 7, "model": "textstats", "version": "1", "inputs": [{"text": "..."}, ...]}
    out  {"id": 7, "outputs": [{"words": 3, ...}, ...]}   (or {"id": 7, "error": "..."}: the whole batch failed)

It echoes each request's `id` and writes nothing else on stdout; anything it writes to
stderr goes to the worker's log. It exits when stdin closes. Only
the standard library: a model in another language speaks the same lines.
"""
import json
import re
import sys
from collections import Counter

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def stats(text: str) -> dict:
    words = [word.lower() for word in WORD.findall(text)]
    sentences = [part for part in re.split(r"[.!?]+", text) if part.strip()]
    return {
        "characters": len(text),
        "words": len(words),
        "sentences": len(sentences),
        "top_words": [word for word, _ in Counter(words).most_common(3)],
    }


def main() -> None:
    print("textstats ready", file=sys.stderr, flush=True)
    for line in sys.stdin:
        request = {}
        try:
            request = json.loads(line)
            answer = {"id": request["id"], "outputs": [stats(item["text"]) for item in request["inputs"]]}
        except Exception as exc:  # the batch fails, the process lives on
            answer = {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
