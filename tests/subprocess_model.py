"""A subprocess model for tests: doubles x, says its pid, and dies when x is -1."""
import json
import os
import sys

for line in sys.stdin:
    inputs = json.loads(line)["inputs"]
    if any(item["x"] == -1 for item in inputs):
        print("asked to die", file=sys.stderr, flush=True)
        os._exit(3)
    if any(item["x"] == -2 for item in inputs):
        answer = {"error": "x=-2 is refused"}
    else:
        answer = {"outputs": [{"double": item["x"] * 2, "pid": os.getpid()} for item in inputs]}
    print(json.dumps(answer), flush=True)
