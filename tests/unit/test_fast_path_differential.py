"""Differential test of the layer beneath Flask (app/fast_path.py): many submits, valid and
near-valid, each sent twice to two apps built alike on two fakeredis servers, one with the
layer and one with Flask alone; the answers (status, headers in order, body bytes) must be
the same but for what must differ per request (prediction ids and the Location holding them,
queue times, a request id chosen by the server), and so must the side effects (records
created, messages sent, the rate limit spent: a third, plain submit probes it)."""
from __future__ import annotations

import json
import re

import fakeredis
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from app import create_app, fast_path, request_ids
from tasks import records
from tasks.senders import RecordingSender
from tests.auth import clear_of_a_minute_edge, keyed_client

PIXELS = [0, 0, 9, 16, 16, 10, 0, 0] * 8
# Inputs answered from the cache when a test seeds it (in both apps alike).
SEEDED = {"digits": {"pixels": PIXELS}, "textstats": {"text": "hello"}, "minilm": {"text": "hello"}}
VERSIONS = {"digits": "1.0.0", "textstats": "1", "minilm": "1.0.0"}
OUTPUT = b'{"label": 3}'
PROBE = {"digits": {"pixels": [1] * 64}, "textstats": {"text": "probe"}, "minilm": {"text": "probe"}}

_HEX_ID = re.compile(rb"[0-9a-f]{32}")
_TIME = re.compile(rb'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00"')

# -- inputs -----------------------------------------------------------------------------------

_odd = st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.just(10**30), st.just(-(10**30)),
                 st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=5),
                 st.just([]), st.just({}))
_grey = st.one_of(st.integers(0, 16), st.floats(0, 16, allow_nan=False), st.sampled_from([0.0, 16.0, -0.0]))
_valid_pixels = st.one_of(st.just(PIXELS), st.lists(_grey, min_size=64, max_size=64))
_near_pixels = st.one_of(
    st.lists(_grey, min_size=63, max_size=65).filter(lambda p: len(p) != 64),
    st.builds(lambda p, i, v: p[:i] + [v] + p[i + 1:], st.just(PIXELS), st.integers(0, 63),
              st.one_of(st.sampled_from([17, -1, 16.0001, -0.0001, True, False, "1", None, 1e308]), _odd)),
    _odd,
)
_image = st.sampled_from(["", "aGVsbG8=", "not base64!", "iVBORw0KGgo=", "x" * 40])
_valid_text = st.one_of(st.just("hello"), st.text(min_size=1, max_size=30),
                        st.sampled_from([" ", "\x00", "\ud7ff", "\U0001f600" * 3, "\u00e9" * 2000, "a" * 2000,
                                         "\u2028", "\\u0000", '"', "\ufeff"]))
_near_text = st.one_of(st.sampled_from(["", "\u00e9" * 2001, "a" * 10001]), _odd)


def _valid_input(model: str):
    if model == "digits":
        return st.builds(lambda p: {"pixels": p}, _valid_pixels)
    text = st.builds(lambda t: {"text": t}, _valid_text)
    if model == "minilm":
        text = st.one_of(text, st.builds(lambda t, n: {"text": t, "normalize": n}, _valid_text, st.booleans()))
    return text


def _near_input(model: str):
    extra = st.dictionaries(st.sampled_from(["extra", "pixels", "text", "normalize", "image", ""]), _odd,
                            min_size=1, max_size=2)
    if model == "digits":
        near = st.one_of(st.builds(lambda p: {"pixels": p}, _near_pixels),
                         st.builds(lambda i: {"image": i}, _image),
                         st.builds(lambda p, i: {"pixels": p, "image": i}, _valid_pixels, _image))
    else:
        near = st.builds(lambda t: {"text": t}, _near_text)
        if model == "minilm":
            near = st.one_of(near, st.builds(lambda t, n: {"text": t, "normalize": n}, _valid_text, _odd))
    with_extra = st.builds(lambda d, e: {**d, **e}, _valid_input(model), extra)
    return st.one_of(near, with_extra, st.just({}), _odd)


_VALID_VERSIONS = {"digits": ["1.0.0"], "textstats": ["1"], "minilm": ["1.0.0"]}
_BAD_VERSIONS = [None, "", "9", "x" * 300, 1, "1.0.0 ", "latest", "1.0", [], "\u00e9"]


@st.composite
def _value(draw, model: str):
    """The parsed body: mostly {"input": ..., "version"?: ...}, valid about half the time;
    else near-valid (an input wrong, a version wrong, extra or missing keys, not a dict)."""
    body = {"input": draw(_valid_input(model))}
    version = draw(st.sampled_from(["absent"] * 3 + _VALID_VERSIONS[model]))
    if version != "absent":
        body["version"] = version
    if draw(st.booleans()):
        return body
    wrong = draw(st.sampled_from(["input"] * 4 + ["version"] * 2 + ["extra", "missing", "not-a-dict"]))
    if wrong == "input":
        body["input"] = draw(_near_input(model))
    elif wrong == "version":
        body["version"] = draw(st.sampled_from(_BAD_VERSIONS))
    elif wrong == "extra":
        body.update(draw(st.dictionaries(st.sampled_from(["extra", "model", "Input", "id", ""]), _odd, min_size=1,
                                         max_size=2)))
    elif wrong == "missing":
        del body["input"]
    else:
        body = draw(st.one_of(_odd, st.lists(st.just({"input": SEEDED[model]}), min_size=1, max_size=2)))
    return body


@st.composite
def _body(draw, model: str) -> bytes:
    """The bytes sent: JSON of a drawn value written several ways, or bytes near JSON."""
    value = draw(_value(model))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
                      indent=draw(st.sampled_from([None, None, 2])))
    how = draw(st.sampled_from(["plain"] * 16 + ["bom", "nan", "big", "dup", "dup-inner", "cut", "garbage",
                                                "latin1", "surrogate", "space", "empty", "bytes", "exp"]))
    if how == "bom":
        return "\ufeff".encode() + text.encode()
    if how == "nan" and '"pixels": [' in text.replace('":[', '": ['):
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]))
        return re.sub(r'"pixels": ?\[[^,\]]*', f'"pixels": [{literal}', text, count=1).encode()
    if how == "nan" and '"text"' in text:
        return re.sub(r'("text": ?)("(?:[^"\\]|\\.)*"|[^,}]+)', r"\1NaN", text, count=1).encode()
    if how == "big":
        return text.replace("16", draw(st.sampled_from(["16.000000000000000001", "1.6e1", "16e0", "160e-1",
                                                        "18446744073709551616", "-0"]))).encode()
    if how == "exp":
        return text.replace(" 0,", " 0e0,").replace(" 0]", " 0.0e-0]").encode()
    if how == "dup" and isinstance(value, dict):
        first = json.dumps(draw(st.one_of(_valid_input(model), _near_input(model))))
        order = draw(st.booleans())
        inner = text[1:] if text.startswith("{") else text
        if text == "{}":
            return ('{"input": ' + first + "}").encode()
        dup = '{"input": ' + first + ", " + inner if order else text[:-1] + ', "input": ' + first + "}"
        return dup.encode()
    if how == "dup-inner" and isinstance(value, dict) and isinstance(value.get("input"), dict):
        key, inner = ("pixels", PIXELS) if model == "digits" else ("text", "hello")
        shown = json.dumps(value["input"])
        extra = f'"{key}": {json.dumps(inner)}'
        spliced = "{" + extra + (", " + shown[1:] if shown != "{}" else "}")
        return text.replace(json.dumps(value["input"]), spliced, 1).encode() if shown in text else text.encode()
    if how == "cut":
        return text.encode()[:draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "garbage":
        return text.encode() + draw(st.sampled_from([b"x", b"}", b" \n", b"\x00", b",", b"//"]))
    if how == "latin1":
        return text.replace("hello", "h\u00e9llo").encode("latin-1", errors="replace")
    if how == "surrogate":
        return text.replace('"hello"', '"\\ud800"').replace('"text": ""', '"text": "\\udfff"').encode()
    if how == "space":
        return b" \t\r\n" + text.encode() + b"\n "
    if how == "empty":
        return b""
    if how == "bytes":
        return draw(st.binary(max_size=40))
    return text.encode()


_CONTENT_TYPES = ["application/json"] * 12 + [
    "application/json; charset=utf-8", "application/merge-patch+json", "text/plain", "APPLICATION/JSON",
    "application/json;charset=latin-1", "application/x-json", "", " application/json ", "application/json;",
    "application/json ; charset=UTF-8", "application/vnd.api+json", "application/json, text/plain",
    "application/+json", "application/json\t", 'application/json; charset="utf-8"']
_REQUEST_IDS = [None, None, "req-1", "a.b:c+d/e=f-g_h", "x" * 128, "x" * 129, "", "bad id; forged=1", "é"]
_PREFERS = [None] * 6 + ["wait=0.01", "wait=0.05", "wait=0", "respond-async, wait=0.01", "wait=abc", "WAIT = \"0.02\""]


@st.composite
def _request(draw):
    model = draw(st.sampled_from(list(SEEDED)))
    headers = {}
    request_id = draw(st.sampled_from(_REQUEST_IDS))
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    prefer = draw(st.sampled_from(_PREFERS))
    if prefer is not None:
        headers["Prefer"] = prefer
    return {"model": model, "body": draw(_body(model)), "content_type": draw(st.sampled_from(_CONTENT_TYPES)),
            "headers": headers, "seeded": draw(st.booleans()),
            "rate_limit": draw(st.sampled_from(["100000/second"] * 3 + ["2/minute", "1/minute"]))}


# -- the two apps -----------------------------------------------------------------------------

def _build(rate_limit: str, seeded: bool, layer: bool):
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    sender = RecordingSender()
    app = create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "rate_limit": rate_limit,
                      "max_wait_s": 0.02}, redis_client=fake, sender=sender)
    if not layer:
        app.wsgi_app = app.wsgi_app.flask  # as _flask_alone in test_fast_path.py
    if seeded:
        ferry = app.extensions["ferry"]
        for model, inputs in SEEDED.items():
            spec = ferry.registry.get(model, None)
            validated = ferry.registry.input_schema(spec.name, spec.version).load(inputs)
            ferry.cache.set(ferry.cache.key(spec.name, spec.cache_version, validated), OUTPUT.decode(), ttl_s=60)
    return app, keyed_client(app), fake, sender


def _send(client, case, body=None):
    return client.post(f"/models/{case['model']}/predictions", data=case["body"] if body is None else body,
                       content_type=case["content_type"] or None, headers=case["headers"])


def _normalised(answers, sent_ids) -> list:
    """The answers with ids (numbered in order of appearance), queue times, chosen request ids
    and the Content-Length that follows from them replaced."""
    ids: dict[bytes, bytes] = {}

    def number(match):
        return ids.setdefault(match.group(0), b"ID%d" % len(ids))

    out = []
    for answer, sent_id in zip(answers, sent_ids, strict=True):
        data = answer.get_data()
        headers = list(answer.headers)
        assert answer.headers.get("Content-Length") in (None, str(len(data)))
        chosen = answer.headers.get(request_ids.HEADER)
        sane = sent_id is not None and request_ids.chosen(sent_id) == sent_id
        if chosen is not None and not sane:
            assert re.fullmatch("[0-9a-f]{32}", chosen), chosen
        data = _TIME.sub(b'"TIME"', _HEX_ID.sub(number, data))
        fixed = []
        for name, value in headers:
            if name == "Content-Length":
                value = "N"
            elif name == request_ids.HEADER and not sane:
                value = "CHOSEN"
            elif name == "Location":
                value = _HEX_ID.sub(number, value.encode()).decode()
            elif name == "Retry-After":
                value = "S"
            fixed.append((name, value))
        data = re.sub(rb"\d+ s\.", b"N s.", data)  # a 429's wait may straddle a second
        out.append((answer.status, fixed, data))
    return out


def _effects(fake, sender) -> tuple:
    store = records.PredictionStore(fake)
    made = []
    for key in sorted(fake.scan_iter("ferry:prediction:*")):
        record = store.get(key.removeprefix("ferry:prediction:"))
        for differs in ("id", "queued_at", "owner", "request_id", "waiter"):
            record.pop(differs, None)
        made.append(sorted(record.items()))
    messages = [{**sent, "args": sent["args"][1:]} for sent in sender.sent]
    return sorted(made), messages


def _differential(case) -> None:
    fast_path._HIT_BODIES.clear()
    if case["rate_limit"].endswith("/minute"):  # both apps count in the same minute
        clear_of_a_minute_edge()
    results = []
    for layer in (True, False):
        app, client, fake, sender = _build(case["rate_limit"], case["seeded"], layer)
        answers = [_send(client, case), _send(client, case)]
        probe = json.dumps({"input": PROBE[case["model"]]}).encode()
        answers.append(client.post(f"/models/{case['model']}/predictions", data=probe,
                                   content_type="application/json", headers={"X-Request-ID": "probe"}))
        sent_ids = [case["headers"].get("X-Request-ID")] * 2 + ["probe"]
        results.append((_normalised(answers, sent_ids), _effects(fake, sender)))
    (fast, fast_effects), (flask, flask_effects) = results
    assert fast == flask
    assert fast_effects == flask_effects


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(_request())
def test_the_layer_answers_every_submit_as_flask_does(case):
    note(repr(case))
    _differential(case)


@pytest.mark.parametrize("model, body", [
    ("digits", json.dumps({"input": {"pixels": PIXELS}}).encode()),
    ("minilm", b'{"input": {"text": "hello", "normalize": true}, "version": "1.0.0"}'),
    ("textstats", b'{"input": {"text": "hi"}}'),
])
@pytest.mark.parametrize("seeded", [True, False])
def test_plain_submits_alike(model, body, seeded):
    _differential({"model": model, "body": body, "content_type": "application/json", "seeded": seeded,
                   "headers": {"X-Request-ID": "req-1", "Prefer": "wait=0.01"}, "rate_limit": "2/minute"})
