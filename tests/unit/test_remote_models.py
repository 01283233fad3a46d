"""http and subprocess models against a real HTTP server and a real child process."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from models.base import TransientError, predict_isolated
from models import remote
from models.remote import HttpModel, SubprocessModel, resolve_command
from models.registry import ROOT

CHILD = ("python", "tests/subprocess_model.py")


@pytest.fixture
def child():
    model = SubprocessModel(CHILD, ROOT)
    model.name, model.version = "child", "1"
    model.setup("cpu")
    yield model
    model.close()


def test_the_command_runs_on_the_workers_python_from_the_repository_root():
    argv = resolve_command(CHILD, ROOT)
    assert Path(argv[0]).name.startswith("python") and argv[1] == str(ROOT / "tests/subprocess_model.py")
    assert resolve_command(("cat", "-n"), ROOT) == ["cat", "-n"]


def test_a_subprocess_model_answers_a_batch_from_one_long_lived_process(child):
    first = child.predict([{"x": 1}, {"x": 2}])
    second = child.predict([{"x": 3}])
    assert [out["double"] for out in first + second] == [2, 4, 6]
    assert len({out["pid"] for out in first + second}) == 1 and child.starts == 1


def test_when_the_process_dies_the_input_in_it_fails_clearly_and_the_next_gets_a_new_one(child):
    before = child.predict([{"x": 1}])[0]["pid"]
    outcomes = predict_isolated(child, [{"x": 5}, {"x": -1}])
    assert outcomes[0][1] is None and '"double":10' in outcomes[0][0]
    assert outcomes[1][0] is None
    assert outcomes[1][1] == ("RuntimeError: The model's process exited (code 3) while running this input; "
                              "a new one is started for the next. Its last words on stderr: asked to die")
    after = child.predict([{"x": 1}])[0]["pid"]
    assert after != before and child.starts >= 2


def test_an_error_line_fails_the_batch_and_the_process_lives_on(child):
    pid = child.predict([{"x": 1}])[0]["pid"]
    with pytest.raises(RuntimeError, match="x=-2 is refused"):
        child.predict([{"x": -2}])
    assert child.predict([{"x": 1}])[0]["pid"] == pid


def test_a_stray_line_on_stdout_never_answers_another_request(child):
    pid = child.predict([{"x": 1}])[0]["pid"]
    with pytest.raises(RuntimeError, match="answered another request"):
        child.predict([{"x": -3}])
    after = child.predict([{"x": 2}])[0]
    assert after["double"] == 4 and after["pid"] != pid, "restarted, and in step again"


def test_the_child_does_not_see_ferrys_settings(monkeypatch):
    monkeypatch.setenv("FERRY_ADMIN_KEY", "secret")
    model = SubprocessModel(("python", "-c", "import json, os, sys\nfor line in sys.stdin:\n"
                                             " r = json.loads(line)\n"
                                             " print(json.dumps({'id': r['id'], 'outputs': [{'env': sorted(k for k in "
                                             "os.environ if k.startswith('FERRY'))}]}), flush=True)"), ROOT)
    model.setup("cpu")
    try:
        assert model.predict([{}]) == [{"env": ["FERRY_DEVICE"]}]
    finally:
        model.close()


def test_an_answer_past_the_bound_fails_its_batch_and_the_next_gets_a_new_process(child, monkeypatch):
    first = child.predict([{"x": 1}])[0]["pid"]
    monkeypatch.setattr(remote, "MAX_ANSWER_BYTES", 40)
    with pytest.raises(RuntimeError, match="more than 40 characters"):
        child.predict([{"x": 1}, {"x": 2}])
    monkeypatch.setattr(remote, "MAX_ANSWER_BYTES", 64 * 2**20)
    assert child.predict([{"x": 4}])[0] == {"double": 8, "pid": child.process.pid} and child.process.pid != first


def test_closing_stops_the_process_for_good(child):
    process = child.process
    child.close()
    assert process.poll() is not None and child.process is None
    with pytest.raises(RuntimeError, match="unloaded"):
        child.predict([{"x": 1}])


@pytest.fixture
def server():
    """A real model server on a free port; `answers` sets what it says next."""
    app = Flask(__name__)
    state = {"status": 200, "body": None, "seen": []}

    @app.post("/predict")
    def predict():
        body = request.get_json()
        state["seen"].append(body)
        answer = state["body"] if state["body"] is not None else {"outputs": [{"y": i["x"] + 1} for i in body["inputs"]]}
        return jsonify(answer), state["status"]

    @app.post("/chunked")
    def chunked():  # no Content-Length: only counting what arrives can stop it
        return app.response_class((b"x" * 1000 for _ in range(100)), mimetype="application/json")

    @app.post("/moved")
    def moved():
        return "", 307, {"Location": "http://169.254.169.254/"}

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_port}"
    yield state
    httpd.shutdown()


def http_model(url: str, timeout_s: float = 5) -> HttpModel:
    model = HttpModel(url, timeout_s)
    model.name, model.version = "remote", "2"
    model.setup("cpu")
    return model


def test_an_http_model_posts_the_batch_and_reads_one_output_per_input(server):
    model = http_model(server["url"] + "/predict")
    assert model.predict([{"x": 1}, {"x": 2}]) == [{"y": 2}, {"y": 3}]
    assert server["seen"] == [{"model": "remote", "version": "2", "inputs": [{"x": 1}, {"x": 2}]}]


@pytest.mark.parametrize("status", [429, 502, 503])
def test_overload_and_unavailability_are_transient(server, status):
    server["status"], server["body"] = status, {"error": "busy"}
    with pytest.raises(TransientError, match=f"answered {status}"):
        http_model(server["url"] + "/predict").predict([{"x": 1}])


def test_a_refused_connection_is_transient():
    with pytest.raises(TransientError, match="unreachable"):
        http_model("http://127.0.0.1:9/predict", timeout_s=1).predict([{"x": 1}])


@pytest.mark.parametrize("status", [422, 500])
def test_a_client_or_plain_server_error_fails_the_input_with_the_servers_words(server, status):
    server["status"], server["body"] = status, {"error": "x must be small"}
    with pytest.raises(RuntimeError, match=f"answered {status}: .*x must be small"):
        http_model(server["url"] + "/predict").predict([{"x": 1}])


def test_a_wrong_number_of_outputs_fails(server):
    server["body"] = {"outputs": []}
    with pytest.raises(RuntimeError, match="answered 0 outputs for 1 inputs"):
        http_model(server["url"] + "/predict").predict([{"x": 1}])


def test_redirects_are_not_followed(server):
    with pytest.raises(RuntimeError, match="answered 307"):
        http_model(server["url"] + "/moved").predict([{"x": 1}])


@pytest.mark.parametrize("path", ["/predict", "/chunked"])
def test_an_answer_past_the_bound_fails_the_batch(server, monkeypatch, path):
    monkeypatch.setattr(remote, "MAX_ANSWER_BYTES", 50)
    server["body"] = {"outputs": [{"y": "x" * 100}]}
    with pytest.raises(RuntimeError, match="answered 200 with more than 50 bytes"):
        http_model(server["url"] + path).predict([{"x": 1}])


def test_errors_name_the_model_and_only_the_workers_log_shows_its_url(server, caplog):
    url = server["url"] + "/moved"
    with pytest.raises(RuntimeError) as failed:
        http_model(url).predict([{"x": 1}])
    assert str(failed.value).startswith("The server of model 'remote' version '2' answered 307")
    assert server["url"] not in str(failed.value) and url in caplog.text
    with pytest.raises(TransientError) as unreachable:
        http_model("http://127.0.0.1:9/predict", timeout_s=1).predict([{"x": 1}])
    assert "127.0.0.1:9" not in str(unreachable.value)


def test_outputs_that_are_not_objects_are_named_as_the_servers(server):
    server["body"] = {"outputs": [[1]]}
    with pytest.raises(RuntimeError, match="answered an output that is not a JSON object \\(list: \\[1\\]\\)"):
        http_model(server["url"] + "/predict").predict([{"x": 1}])
