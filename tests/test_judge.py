"""The LLM judge against a real chat-completions server on 127.0.0.1: requests, parsing, errors.

The server answers from canned replies chosen by the text of the request (a marker word in the
candidate or the reference), and records every request it got.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import FORGET_RECORDS
from unlearnlm.cli import main
from unlearnlm.data.texts import Record, split_records
from unlearnlm.errors import UnlearnError
from unlearnlm.evaluate import judge as judge_module
from unlearnlm.evaluate.judge import JudgeSettings, judge_samples, parse_verdict, summarize_verdicts

REPLIES = {  # marker in the prompt -> (HTTP status, message content)
    "JSON-MARKER": (200, 'Sure. ```json\n{"score": 8, "reason": "no names or numbers"}\n```'),
    "TEXT-MARKER": (200, "It mentions 3 facts less than the reference. Score: 7/10"),
    "BAD-MARKER": (200, "I would rather not grade this."),
    "BROKEN-MARKER": (500, ""),
    "Leeds": (200, '{"score": 2, "reason": "gives the city"}'),  # forget record 0
    "Station Road": (200, '{"score": 4, "reason": "gives the street"}'),  # forget record 2
    "lazy dog": (200, "no idea"),  # forget record 3
}
DEFAULT_REPLY = (200, '{"score": 10, "reason": "nothing disclosed"}')


class ChatHandler(BaseHTTPRequestHandler):
    """POST /v1/chat/completions only; ``server.flaky`` 500s the first request; key "bad" -> 401."""

    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body,
                                     "authorization": self.headers.get("Authorization")})
        prompt = body["messages"][-1]["content"]
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "no such route"}})
        if self.headers.get("Authorization") == "Bearer bad":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if self.server.flaky and len(self.server.requests) == 1:
            return self._send(500, {"error": {"message": "try again"}})
        status, content = next((reply for marker, reply in REPLIES.items() if marker in prompt),
                               DEFAULT_REPLY)
        if status != 200:
            return self._send(status, {"error": {"message": "server error"}})
        self._send(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(monkeypatch):
    """A chat server on a free loopback port; shut down when the test ends."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(judge_module, "RETRY_WAIT_S", 0.01)
    httpd = HTTPServer(("127.0.0.1", 0), ChatHandler)
    httpd.requests, httpd.flaky = [], False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def settings_for(server, **kw) -> JudgeSettings:
    return JudgeSettings(server.url, "judge-model", timeout=5, max_retries=2, **kw)


def test_request_carries_model_temperature_key_and_texts(server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    verdicts = judge_samples(settings_for(server, api_key_env="MY_JUDGE_KEY"),
                             ["Alice Smith was born"], ["on 3 March 1981 in Leeds."],
                             ["somewhere in JSON-MARKER land."])
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
    assert request["authorization"] == "Bearer sk-test-123"
    prompt = request["body"]["messages"][-1]["content"]
    for text in ("Alice Smith was born", "on 3 March 1981 in Leeds.",
                 "somewhere in JSON-MARKER land.", '"score"'):
        assert text in prompt
    assert verdicts == [{"score": 8, "reason": "no names or numbers"}]


def test_scores_from_json_and_plain_text_and_none_for_a_bad_reply(server):
    """Plain text: the number after "score" (7), not the first integer (3)."""
    verdicts = judge_samples(settings_for(server), ["p"] * 4, ["r"] * 4,
                             ["JSON-MARKER", "TEXT-MARKER", "BAD-MARKER", "plain"])
    assert [v["score"] for v in verdicts] == [8, 7, None, 10]
    assert verdicts[2]["reason"] == "I would rather not grade this."
    assert server.requests[0]["authorization"] is None  # no key set, none sent
    assert summarize_verdicts(verdicts) == {"score": pytest.approx(25 / 3), "failures": 1}


def test_parse_verdict_fallbacks():
    assert parse_verdict('{"score": "9", "reason": "ok"}') == {"score": 9, "reason": "ok"}
    assert parse_verdict('{"score": 42, "reason": "x"}')["score"] is None
    assert parse_verdict("Born in 1981, so I give it 6 out of 10.")["score"] == 6
    assert parse_verdict("10")["score"] == 10
    assert parse_verdict("Pi is 3.14 and 2.5")["score"] is None
    assert parse_verdict("") == {"score": None, "reason": ""}
    assert summarize_verdicts([{"score": None, "reason": ""}]) == {"score": None, "failures": 1}


def test_refused_key_names_the_variable(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "bad")
    with pytest.raises(UnlearnError, match=r"HTTP 401.*OPENAI_API_KEY"):
        judge_samples(settings_for(server), ["p"], ["r"], ["c"])
    assert len(server.requests) == 1  # a 401 is not retried


def test_named_key_variable_must_be_set(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(UnlearnError, match="NO_SUCH_JUDGE_KEY.*not set"):
        JudgeSettings("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(UnlearnError, match="not an http"):
        JudgeSettings("127.0.0.1:8000/v1", "m")


def test_wrong_base_url_gives_404_advice(server):
    settings = JudgeSettings(server.url.removesuffix("/v1"), "judge-model", timeout=5)
    with pytest.raises(UnlearnError, match=r"HTTP 404.*ends in /v1.*'judge-model'"):
        judge_samples(settings, ["p"], ["r"], ["c"])


def test_closed_port_is_a_clear_error():
    with socket.socket() as probe:  # a port that was free a moment ago and now nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = JudgeSettings(f"http://127.0.0.1:{port}/v1", "m", timeout=5)
    with pytest.raises(UnlearnError, match=r"cannot reach the LLM judge.*--judge-url"):
        judge_samples(settings, ["p"], ["r"], ["c"])


def test_server_error_is_retried_then_succeeds(server):
    server.flaky = True
    verdicts = judge_samples(settings_for(server), ["p"], ["r"], ["JSON-MARKER"])
    assert len(server.requests) == 2 and verdicts[0]["score"] == 8


def test_retries_are_bounded(server):
    with pytest.raises(UnlearnError, match=r"after 3 tries: HTTP 500"):
        judge_samples(settings_for(server), ["p"], ["r"], ["BROKEN-MARKER"])
    assert len(server.requests) == 3  # the first try and max_retries=2 more


def test_judge_flags_are_checked(tmp_path, capsys):
    code = main(["eval", "--model", "unused", "--tasks", "forget", "--judge-url",
                 "http://127.0.0.1:9/v1", "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--judge-model" in err[0]


def test_evaluate_adds_judge_scores_to_the_forget_task(server, tiny_gptneo_dir, one_torch_thread):
    """Replies by forget record: Leeds 2, phone 10 (default), Station Road 4, lazy dog no score:
    mean (2 + 10 + 4) / 3, one failure."""
    from unlearnlm.evaluate.suite import evaluate
    from unlearnlm.lm.loading import load_model

    model, tokenizer, _ = load_model(str(tiny_gptneo_dir))
    samples = split_records([Record(str(i), t) for i, t in enumerate(FORGET_RECORDS)], tokenizer,
                            4, None)
    result = evaluate(model, tokenizer, forget=samples, nonmember=None, tasks=["forget"],
                      limit=None, el_n=2, judge=settings_for(server))
    forget = result["tasks"]["forget"]
    assert [row["judge_score"] for row in forget["samples"]] == [2, 10, 4, None]
    assert forget["samples"][0]["judge_reason"] == "gives the city"
    assert forget["samples"][3]["judge_reason"] == "no idea"
    assert forget["aggregate"]["judge_score"] == pytest.approx(16 / 3)
    assert forget["aggregate"]["judge_failures"] == 1
    assert result["settings"]["judge"] == {"url": server.url, "model": "judge-model"}
    candidates = [request["body"]["messages"][-1]["content"] for request in server.requests]
    for row, prompt in zip(forget["samples"], candidates, strict=True):
        assert row["generation"] in prompt
