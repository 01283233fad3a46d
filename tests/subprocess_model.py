"""A subprocess model for tests: doubles x and says its pid; dies when x is -1, refuses
x=-2, and when x is -3 writes a stray line before its answer."""
import json
import os
import sys

for line in sys.stdin:
    request = json.loads(line)
    inputs = request["inputs"]
    if any(item["x"] == -1 for item in inputs):
        print("asked to die", file=sys.stderr, flush=True)
        os._exit(3)
    if any(item["x"] == -3 for item in inputs):
        print(json.dumps({"outputs": [{"stray": True}]}), flush=True)
    if any(item["x"] == -2 for item in inputs):
        answer = {"id": request["id"], "error": "x=-2 is refused"}
    else:
        answer = {"id": request["id"], "outputs": [{"double": item["x"] * 2, "pid": os.getpid()} for item in inputs]}
    print(json.dumps(answer), flush=True)
