"""Serving hardening: one bad input fails only itself, OpenAI moderation shapes, the key from a file."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from conftest import load_script, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

import guardtune.serve
from guardtune.api import train
from guardtune.errors import GuardtuneError
from guardtune.serve import (
    TRANSCRIPT_PREAMBLE,
    BackgroundServer,
    ServeSettings,
    create_app,
    load_guards,
    read_api_key,
    read_chat_preamble,
)
from guardtune.serve.batcher import MicroBatcher
from guardtune.serve.guards import Guard
from guardtune.serve.metrics import ServeMetrics
from guardtune.serve.server import CloseWhenDraining
from guardtune.task import load_task
from guardtune.train import TrainSettings

SETTINGS = ServeSettings(max_batch_size=32, max_wait_ms=50, max_queue=256, request_timeout_s=30)
JSON = {"content-type": "application/json"}
GOOD = ["whats ur number", "gg nice map", "call me at my street", "fun level win"]


@pytest.fixture(scope="module")
def guards(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("isolation") / "pii"
    fast = TrainSettings(max_steps=5, batch_size=16, max_length=32, seed=3, dtype="fp32")
    train(load_task("pii-intent"), toy_files["train"], out, base=tiny_base, settings=fast)
    return load_guards({"pii": out}, dtype="fp32")


def _burst(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as http:

            async def one(body: dict[str, Any]) -> httpx.Response:
                # json.dumps escapes a lone surrogate as \\ud800 (httpx's json= cannot encode it).
                content = json.dumps(body).encode()
                async with gate:
                    return await http.post("/v1/classify", content=content, headers=JSON)

            return list(await asyncio.gather(*(one(b) for b in bodies)))

    return asyncio.run(run())


def test_a_poisoned_burst_fails_only_the_poisoned_requests(guards: dict[str, Guard]) -> None:
    # A lone surrogate is valid JSON but not valid Unicode: the tokenizer would raise on it.
    bodies = [
        {"model": "pii", "input": ["ok", "\ud800"] if i % 8 == 7 else GOOD[i % len(GOOD)]} for i in range(64)
    ]
    with BackgroundServer(create_app(guards, SETTINGS)) as server:
        responses = _burst(server.url, bodies, concurrency=32)
        assert httpx.get(server.url + "/healthz", trust_env=False).status_code == 200
    for i, response in enumerate(responses):
        if i % 8 == 7:
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["param"] == "input"
            assert "input[1]: character 0 is a lone surrogate" in error["message"]
        else:
            assert response.status_code == 200, response.text


class _Poisoned:
    """A classifier that raises on any batch holding the word POISON, as a model bug would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_proba(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        if any("POISON" in text for text in texts):
            raise ValueError("cannot score this batch")
        return np.asarray(self.inner.predict_proba(texts, **kwargs))


def test_an_error_inside_a_micro_batch_fails_only_its_own_request(guards: dict[str, Guard]) -> None:
    real = guards["pii"]
    poisoned = {"pii": Guard("pii", _Poisoned(real.classifier), real.backbone)}  # type: ignore[arg-type]
    bodies = [{"model": "pii", "input": "POISON" if i % 8 == 7 else GOOD[i % len(GOOD)]} for i in range(64)]
    app = create_app(poisoned, SETTINGS)
    with BackgroundServer(app) as server:
        responses = _burst(server.url, bodies, concurrency=32)
        metrics = httpx.get(server.url + "/metrics", trust_env=False).text
    statuses = [r.status_code for r in responses]
    assert [s for i, s in enumerate(statuses) if i % 8 != 7] == [200] * 56
    assert [s for i, s in enumerate(statuses) if i % 8 == 7] == [500] * 8
    assert responses[7].json()["error"]["message"] == "model error: ValueError"
    expected = real.classifier.predict_proba(GOOD)
    for i, response in enumerate(responses):
        if i % 8 != 7:
            scores = response.json()["results"][0]["scores"]
            np.testing.assert_allclose(list(scores.values()), expected[i % len(GOOD)], atol=1e-4)
    retries = next(line for line in metrics.splitlines() if line.startswith("guardtune_batch_retries_total"))
    assert float(retries.split()[-1]) >= 1  # the poisoned requests did share batches with good ones


def test_the_batcher_retries_a_failed_batch_one_job_at_a_time() -> None:
    calls: list[list[str]] = []

    def score(_: str, texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        if "bad" in texts:
            raise RuntimeError("tokenizer error")
        return np.array([[float(len(t))] for t in texts])

    batcher = MicroBatcher(score, max_batch_size=16, max_wait_ms=200, max_queue=16, metrics=ServeMetrics())

    async def scenario() -> list[Any]:
        batcher.start()
        try:
            jobs = [batcher.score("g", ["a", "bb"]), batcher.score("g", ["bad"]), batcher.score("g", ["ccc"])]
            return list(await asyncio.gather(*jobs, return_exceptions=True))
        finally:
            await asyncio.to_thread(batcher.stop)

    first, second, third = asyncio.run(scenario())
    assert calls[0] == ["a", "bb", "bad", "ccc"]  # one micro-batch first
    assert calls[1:] == [["a", "bb"], ["bad"], ["ccc"]]  # then each job alone
    np.testing.assert_array_equal(first, [[1.0], [2.0]])
    assert isinstance(second, RuntimeError)
    np.testing.assert_array_equal(third, [[3.0]])


def test_worker_drops_jobs_whose_request_already_timed_out() -> None:
    scored: list[list[str]] = []

    def score(guard: str, texts: list[str]) -> np.ndarray:
        scored.append(list(texts))
        return np.zeros((len(texts), 1))

    metrics = ServeMetrics()
    batcher = MicroBatcher(score, max_batch_size=16, max_wait_ms=0, max_queue=16, metrics=metrics)
    release = threading.Event()

    async def scenario() -> np.ndarray:
        batcher.start()
        try:
            hold = asyncio.ensure_future(batcher.run(release.wait))  # occupy the worker
            await asyncio.sleep(0.1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(batcher.score("g", ["timed out"]), timeout=0.1)
            with pytest.raises(TimeoutError):
                stale_call = batcher.run(lambda: scored.append(["a call that timed out"]))
                await asyncio.wait_for(stale_call, timeout=0.1)
            release.set()
            await hold
            result: np.ndarray = await batcher.score("g", ["still waited for"])
            return result
        finally:
            release.set()
            await asyncio.to_thread(batcher.stop)

    assert asyncio.run(scenario()).shape == (1, 1)
    assert scored == [["still waited for"]]
    # The dropped job made no (empty) micro-batch in the metrics.
    assert metrics.registry.get_sample_value("guardtune_batch_size_count") == 1


# --- OpenAI moderation shapes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_guard_server(guards: dict[str, Guard]) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(guards, SETTINGS)) as running:
        yield running


def test_moderation_takes_text_parts_and_no_model_when_one_guard_is_loaded(
    one_guard_server: BackgroundServer, guards: dict[str, Guard]
) -> None:
    client = OpenAI(base_url=one_guard_server.url + "/v1", api_key="unused", max_retries=0)
    parts = [{"type": "text", "text": text} for text in GOOD]
    response = client.moderations.create(input=parts)  # type: ignore[arg-type]
    assert response.model == "pii" and len(response.results) == len(GOOD)
    expected = guards["pii"].classifier.predict(GOOD)
    for result, wanted in zip(response.results, expected, strict=True):  # type: ignore[arg-type]
        scores = result.category_scores.model_dump(exclude_unset=True)
        assert result.flagged == (wanted.label != "none")
        assert scores["asking"] == pytest.approx(wanted.scores["asking"], abs=1e-4)
    plain = client.moderations.create(input=GOOD[0])
    single = plain.results[0].category_scores.model_dump(exclude_unset=True)
    assert single == pytest.approx(
        response.results[0].category_scores.model_dump(exclude_unset=True), abs=1e-4
    )


@pytest.mark.parametrize(
    ("given", "status", "message"),
    [
        (
            ["a text", {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}],
            422,
            "input[1]: 'image_url' parts are not supported; guards classify text",
        ),
        ([{"type": "text", "text": "ok"}, {"type": "text"}], 422, "input[1].text: expected a string"),
        ([{"type": "text", "text": "ok"}, {"type": "audio", "audio": "..."}], 422, "input[1]: 'audio' parts"),
        ([{"text": "no type"}], 422, "type"),
    ],
    ids=["image part", "text part without text", "unknown part type", "part without type"],
)
def test_moderation_refuses_parts_it_cannot_classify_naming_the_index(
    one_guard_server: BackgroundServer, given: list[Any], status: int, message: str
) -> None:
    response = httpx.post(
        one_guard_server.url + "/v1/moderations", json={"model": "pii", "input": given}, trust_env=False
    )
    assert response.status_code == status
    assert message in response.json()["error"]["message"]
    assert response.json()["error"]["param"].startswith("input")


def test_moderation_without_model_on_a_server_with_several_guards_is_400_listing_them(
    guards: dict[str, Guard],
) -> None:
    pii = guards["pii"]
    two = {"pii": pii, "other": Guard("other", pii.classifier, pii.backbone)}
    with BackgroundServer(create_app(two, SETTINGS)) as running:
        response = httpx.post(running.url + "/v1/moderations", json={"input": "hi"}, trust_env=False)
        named = httpx.post(
            running.url + "/v1/moderations", json={"model": "other", "input": "hi"}, trust_env=False
        )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "model: required when the server holds several guards (loaded: other, pii)",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_required",
    }
    assert named.status_code == 200 and named.json()["model"] == "other"


def test_settings_report_every_bad_limit_at_once() -> None:
    with pytest.raises(GuardtuneError) as raised:
        ServeSettings(max_batch_size=0, max_batch_tokens=-2, max_wait_ms=-1)
    message = str(raised.value)
    assert "--max-batch-size: expected a positive number, found 0" in message
    assert "--max-batch-tokens: expected 0 (no limit) or a positive integer, found -2" in message
    assert "--max-wait-ms: expected 0 or more, found -1" in message and "\n" not in message
    assert ServeSettings(max_batch_tokens=0).max_batch_tokens is None


# --- the API key from a file ------------------------------------------------------------------------


def test_api_key_file_is_read_and_bad_files_get_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    assert read_api_key(key_file) == "s3cret"
    for content, expected in (("", "the file is empty"), ("a\nb\n", "found more lines")):
        key_file.write_text(content)
        with pytest.raises(GuardtuneError, match=expected):
            read_api_key(key_file)
    with pytest.raises(GuardtuneError, match="absent: no such file"):
        read_api_key(tmp_path / "absent")


def test_serve_command_takes_the_key_from_a_file(
    guards: dict[str, Guard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = guards["pii"].classifier.directory
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    served: list[Any] = []
    monkeypatch.setattr(guardtune.serve, "run", lambda app, **_: served.append(app))
    monkeypatch.delenv("GUARDTUNE_API_KEY", raising=False)
    args = ["serve", "--model", f"pii={directory}", "--dtype", "fp32", "--api-key-file", key_file]
    assert run_cli(monkeypatch, *args) == 0
    assert served[0].state.settings.api_key == "from-a-file"
    assert "(API key required)" in capsys.readouterr().out

    monkeypatch.setenv("GUARDTUNE_API_KEY", "from-the-environment")
    assert run_cli(monkeypatch, *args) == 1
    assert "--api-key-file: give the key one way" in capsys.readouterr().err


def test_chat_preamble_file_replaces_the_built_in_one(
    guards: dict[str, Guard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    preamble = tmp_path / "preamble.txt"
    preamble.write_text("user: hi\nassistant: Hello!\n\n", encoding="utf-8")
    assert read_chat_preamble(preamble) == "user: hi\nassistant: Hello!\n"
    preamble.write_text("")
    assert read_chat_preamble(preamble) == ""
    preamble.write_bytes(b"\xff\xfe bad")
    with pytest.raises(GuardtuneError, match=r"preamble\.txt: cannot read as UTF-8"):
        read_chat_preamble(preamble)
    with pytest.raises(GuardtuneError, match=r"--chat-preamble-file .*: cannot read \(Is a directory\)"):
        read_chat_preamble(tmp_path)

    directory = guards["pii"].classifier.directory
    served: list[Any] = []
    monkeypatch.setattr(guardtune.serve, "run", lambda app, **_: served.append(app))
    args = ["serve", "--model", f"pii={directory}", "--dtype", "fp32"]
    assert run_cli(monkeypatch, *args) == 0
    assert served[-1].state.settings.chat_preamble == TRANSCRIPT_PREAMBLE
    preamble.write_text("")
    assert run_cli(monkeypatch, *args, "--chat-preamble-file", preamble) == 0
    assert served[-1].state.settings.chat_preamble == ""
    capsys.readouterr()
    assert run_cli(monkeypatch, *args, "--chat-preamble-file", tmp_path / "absent") == 1
    assert f"--chat-preamble-file {tmp_path / 'absent'}: no such file" in capsys.readouterr().err


def test_responses_close_their_connection_once_the_server_drains() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    draining = threading.Event()

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=CloseWhenDraining(app, draining))
        async with httpx.AsyncClient(transport=transport, base_url="http://guard") as http:
            return await http.get("/v1/models")

    assert "connection" not in asyncio.run(get()).headers
    draining.set()
    response = asyncio.run(get())
    assert response.headers["connection"] == "close" and response.text == "ok"


# --- the soak script, briefly: SIGTERM under load -------------------------------------------------


def test_soak_script_briefly_no_unexpected_status_and_a_clean_sigterm(
    guards: dict[str, Guard], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # soak_serve imports bench_serve, its neighbour
    soak = load_script(benchmarks / "soak_serve.py")
    directory = guards["pii"].classifier.directory
    args = ["--model", str(directory), "--minutes", "0.1", "--concurrency", "16", "--warmup-s", "2"]
    result = soak.main([*args, "--dtype", "fp32", "--after-term-s", "1", "--json", str(tmp_path / "s.json")])
    assert json.loads((tmp_path / "s.json").read_text()) == result
    assert result["unexpected"] == {}
    counts = result["status_counts"]
    assert (
        counts["valid"].get("200", 0) > 0
        and counts["invalid"]
        and counts["oversized"] == {"413": sum(counts["oversized"].values())}
    )
    term = result["sigterm"]
    assert term["exit_code"] == 0 and term["in_flight_unfinished"] == 0
    # Requests sent after SIGTERM are refused once uvicorn has seen it (within its 0.1 s tick).
    # None: no request sent after the signal was served at all, which is the stricter outcome.
    last_served = term["last_served_ms_after_signal"]
    assert term["sent_after"].get("ConnectError", 0) > 0 and (last_served is None or last_served < 500)
    assert all(result["rss_mb"][k] > 0 for k in ("start", "after_warmup", "end"))


# --- fuzz every route with random text ------------------------------------------------------------

FUZZ_LIMITS = ServeSettings(
    max_chars=300, max_inputs=8, max_body_bytes=50_000, max_new_tokens=3, max_wait_ms=1
)
text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec=None, categories=["Cs"]), min_size=1, max_size=3),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
    st.sampled_from(
        ["", " ", "\x00" * 50, "\u202e\ufeff", "\u0300" * 200, "😀" * 150, "x" * 301, "y" * 60_000]
    ),
)
texts_or_parts = st.one_of(
    text,
    st.lists(text, max_size=10),
    st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", ""]), "text": text}), max_size=4
    ),
)
model_name = st.one_of(st.just("pii"), text)
requests = st.one_of(
    st.tuples(st.just("/v1/classify"), st.fixed_dictionaries({"model": model_name, "input": texts_or_parts})),
    st.tuples(
        st.just("/v1/moderations"),
        st.fixed_dictionaries({"input": texts_or_parts}, optional={"model": model_name}),
    ),
    st.tuples(
        st.just("/v1/chat/completions"),
        st.fixed_dictionaries(
            {
                "model": model_name,
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {"role": st.sampled_from(["user", "system", "x"]), "content": text}
                    ),
                    max_size=3,
                ),
            }
        ),
    ),
)


@pytest.fixture(scope="module")
def fuzz_server(guards: dict[str, Guard]) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(guards, FUZZ_LIMITS)) as running:
        yield running


def _one_line_error_or_ok(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        message = response.json()["error"]["message"]
        assert isinstance(message, str) and message and "\n" not in message


def test_fuzzed_bodies_on_every_post_route_get_200_or_a_one_line_4xx(fuzz_server: BackgroundServer) -> None:
    with httpx.Client(base_url=fuzz_server.url, trust_env=False, timeout=60) as http:

        @settings(max_examples=150, derandomize=True, deadline=None, database=None)
        @given(request=requests)
        def check(request: tuple[str, dict[str, Any]]) -> None:
            path, body = request
            # ensure_ascii escapes lone surrogates, as a client's JSON encoder would
            _one_line_error_or_ok(http.post(path, content=json.dumps(body).encode(), headers=JSON))

        check()
        assert http.get("/healthz").status_code == 200


def test_fuzzed_paths_and_raw_bodies_get_4xx(fuzz_server: BackgroundServer) -> None:
    with httpx.Client(base_url=fuzz_server.url, trust_env=False, timeout=60) as http:

        @settings(max_examples=80, derandomize=True, deadline=None, database=None)
        @given(
            path=st.text(max_size=30).map(lambda p: "/" + quote(p, safe="")),
            route=st.sampled_from(["/v1/classify", "/v1/moderations", "/v1/chat/completions", "/v1/models"]),
            raw=st.binary(max_size=200),
        )
        def check(path: str, route: str, raw: bytes) -> None:
            _one_line_error_or_ok(http.get(path))
            response = http.post(route, content=raw, headers=JSON)
            _one_line_error_or_ok(response)
            assert response.status_code >= 400

        check()
        assert http.get("/healthz").status_code == 200
