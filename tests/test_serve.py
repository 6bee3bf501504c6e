"""The guard server for real: uvicorn on 127.0.0.1 (ephemeral port), tiny models, real clients."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModelForCausalLM, GenerationConfig

from guardtune.api import Classifier, train
from guardtune.cli import main
from guardtune.serve import BackgroundServer, ServeSettings, create_app, load_guards
from guardtune.serve.chat import cut_at_next_turn, prompt_ids, turn_stops
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = ServeSettings(
    max_batch_size=16,
    max_batch_tokens=12,  # a micro-batch in several passes: the scores must not change
    max_wait_ms=20,
    max_queue=128,
    max_inputs=8,
    max_chars=200,
    max_body_bytes=20_000,
    request_timeout_s=20,
    max_new_tokens=6,
    api_key=KEY,
)
TEXTS = ["whats ur number", "gg nice map", "call me at my street", "where do u live", "fun level win"]
# Two guards of different kinds on the same tiny base: single-label and multi-label.
MULTI = task_from_dict(
    {
        "name": "toy-categories",
        "mode": "multi",
        "labels": {"asking": "asks for contact info", "giving": "shares contact info"},
    }
)


@pytest.fixture(scope="module")
def guard_dirs(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    fast = TrainSettings(max_steps=30, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
    train(
        load_task("pii-intent"),
        toy_files["train"],
        root / "pii",
        val_path=toy_files["val"],
        base=tiny_base,
        settings=fast,
    )
    import pandas as pd

    frame = pd.read_csv(toy_files["train"])
    frame["labels"] = frame["label"].where(frame["label"] != "none", "")
    frame[["text", "labels"]].to_csv(root / "multi.csv", index=False)
    train(MULTI, root / "multi.csv", root / "cats", base=tiny_base, settings=fast)
    return {"pii": root / "pii", "cats": root / "cats"}


@pytest.fixture(scope="module")
def reference(guard_dirs: dict[str, Path]) -> dict[str, Classifier]:
    """The same models loaded on their own, for comparing the server with ``Classifier.predict``."""
    return {name: Classifier.load(d, dtype="fp32") for name, d in guard_dirs.items()}


@pytest.fixture(scope="module")
def guards(guard_dirs: dict[str, Path]):
    return load_guards(guard_dirs, dtype="fp32")


@pytest.fixture(scope="module")
def server(guards):
    with BackgroundServer(create_app(guards, LIMITS)) as running:
        yield running


@pytest.fixture
def client(server: BackgroundServer):
    with httpx.Client(base_url=server.url, headers=AUTH, trust_env=False, timeout=30) as http:
        yield http


def openai_client(server: BackgroundServer) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def test_guards_share_one_base(guards) -> None:
    assert guards["pii"].backbone is guards["cats"].backbone
    assert sorted(guards["pii"].backbone.peft_model.peft_config) == ["cats", "pii"]


def test_openai_moderations_returns_the_guards_result(server, reference) -> None:
    response = openai_client(server).moderations.create(model="pii", input=TEXTS)
    assert response.model == "pii" and len(response.results) == len(TEXTS)
    for result, expected in zip(response.results, reference["pii"].predict(TEXTS), strict=True):
        categories = result.categories.model_dump(exclude_unset=True)
        scores = result.category_scores.model_dump(exclude_unset=True)
        assert set(categories) == {"asking", "giving"}  # every label but the negative one
        assert result.flagged == (expected.label != "none")
        assert categories == {name: expected.label == name for name in ("asking", "giving")}
        for name in ("asking", "giving"):
            assert scores[name] == pytest.approx(expected.scores[name], abs=1e-4)

    multi = openai_client(server).moderations.create(model="cats", input="call me at my street")
    expected_multi = reference["cats"].predict("call me at my street")
    assert multi.results[0].categories.model_dump(exclude_unset=True) == {
        name: name in expected_multi.label for name in ("asking", "giving")
    }
    assert multi.results[0].flagged == bool(expected_multi.label)


def test_classify_agrees_with_predict(client: httpx.Client, reference) -> None:
    for name in ("pii", "cats"):
        body = client.post("/v1/classify", json={"model": name, "input": TEXTS}).json()
        assert body["labels"] == reference[name].labels and body["model"] == name
        for got, expected in zip(body["results"], reference[name].predict(TEXTS), strict=True):
            assert got["label"] == expected.label
            np.testing.assert_allclose(
                [got["scores"][k] for k in body["labels"]], list(expected.scores.values()), atol=1e-4
            )
    one = client.post("/v1/classify", json={"model": "pii", "input": "gg nice map"}).json()
    assert len(one["results"]) == 1 and "min_confidence" in one["policy"]


def test_the_server_scores_within_its_token_budget(guards, client: httpx.Client, monkeypatch) -> None:
    method = guards["pii"].classifier.method
    shapes: list[tuple[int, ...]] = []
    scores = method.scores

    def recording(input_ids, attention_mask, prefix=None):  # type: ignore[no-untyped-def]
        shapes.append(tuple(input_ids.shape))
        return scores(input_ids, attention_mask, prefix=prefix)

    monkeypatch.setattr(method, "scores", recording)
    body = client.post("/v1/classify", json={"model": "pii", "input": TEXTS}).json()
    assert len(body["results"]) == len(TEXTS)
    budget = LIMITS.max_batch_tokens
    assert budget is not None and len(shapes) > 1
    assert all(rows * width <= budget or rows == 1 for rows, width in shapes), shapes


def test_models_lists_the_loaded_guards(client: httpx.Client) -> None:
    data = client.get("/v1/models").json()["data"]
    assert {(m["id"], m["mode"]) for m in data} == {("pii", "single"), ("cats", "multi")}


def _base_reply(tiny_base: str, tokenizer: Any, text: str) -> str:
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids(tokenizer, [{"role": "user", "content": text}], LIMITS.chat_preamble)])
    config = GenerationConfig(
        max_new_tokens=LIMITS.max_new_tokens,
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    reply, _ = cut_at_next_turn(str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)))
    return reply.strip()


def test_a_transcript_prompt_starts_with_the_preamble(reference) -> None:
    tokenizer = reference["pii"].method.backbone.tokenizer
    assert not getattr(tokenizer, "chat_template", None)  # the tiny base reads a plain transcript
    messages = [{"role": "user", "content": "gg"}]
    expected = tokenizer("Be kind.\nuser: gg\nassistant:")["input_ids"]
    assert prompt_ids(tokenizer, messages, "Be kind.\n") == expected
    assert prompt_ids(tokenizer, messages) == tokenizer("user: gg\nassistant:")["input_ids"]


def test_the_turn_stops_are_built_once_per_tokenizer(reference) -> None:
    tokenizer = reference["pii"].method.backbone.tokenizer
    assert turn_stops(tokenizer)[0] is turn_stops(tokenizer)[0]


def test_a_transcript_reply_ends_where_the_base_starts_another_turn() -> None:
    continuation = " Paris is the capital of France.\nuser: im in 9th grade\nassistant: cool"
    assert cut_at_next_turn(continuation) == (" Paris is the capital of France.", True)
    assert cut_at_next_turn(" Hi!\nSystem: be brief\nuser: ok") == (" Hi!", True)
    # A role word inside the answer is not a turn.
    assert cut_at_next_turn(" The user: a person who uses it.") == (" The user: a person who uses it.", False)


def test_chat_reply_equals_the_base_models_reply_for_a_safe_message(server, reference, tiny_base) -> None:
    guard = reference["pii"]
    tokenizer = guard.method.backbone.tokenizer
    # A random tiny model says random things; use a message whose base reply the guard also passes.
    for text in ("gg nice map", "fun level win", "play the tower game", "nice score gg", "win win fun"):
        expected = _base_reply(tiny_base, tokenizer, text)
        if guard.predict(text).label == "none" and guard.predict(expected).label == "none":
            break
    else:
        pytest.fail("no candidate message whose base reply the guard passes")
    reply = openai_client(server).chat.completions.create(
        model="pii", messages=[{"role": "user", "content": text}], max_tokens=50
    )
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens <= LIMITS.max_new_tokens
    verdicts = reply.model_extra["guard"]  # type: ignore[index]
    assert [(v["stage"], v["flagged"]) for v in verdicts] == [("input", False), ("output", False)]


def test_chat_refuses_a_flagged_message_with_its_categories(server, reference) -> None:
    text = "my phone is here call me at my street"
    assert reference["pii"].predict(text).label == "giving"
    reply = openai_client(server).chat.completions.create(
        model="pii", messages=[{"role": "user", "content": text}]
    )
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == LIMITS.refusal
    verdicts = reply.model_extra["guard"]  # type: ignore[index]
    assert verdicts == [
        {"stage": "input", "flagged": True, "categories": ["giving"], "scores": verdicts[0]["scores"]}
    ]


def _batch_stats(client: httpx.Client) -> tuple[float, float]:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    samples = {s.name: s.value for s in families["guardtune_batch_size"].samples if not s.labels.get("le")}
    return samples["guardtune_batch_size_count"], samples["guardtune_batch_size_sum"]


def test_400_concurrent_requests_are_micro_batched_without_errors(server, client, reference) -> None:
    expected = {name: [p.label for p in reference[name].predict(TEXTS)] for name in ("pii", "cats")}
    jobs = list(itertools.islice(itertools.cycle(itertools.product(("pii", "cats"), range(len(TEXTS)))), 400))
    before = _batch_stats(client)
    failures: list[str] = []

    async def load() -> None:
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, trust_env=False, timeout=30) as http:

            async def worker() -> None:
                while not queue.empty():
                    name, i = queue.get_nowait()
                    response = await http.post("/v1/classify", json={"model": name, "input": TEXTS[i]})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text}")
                    elif response.json()["results"][0]["label"] != expected[name][i]:
                        failures.append(f"{name} {TEXTS[i]!r}: {response.json()['results'][0]['label']}")

            await asyncio.gather(*(worker() for _ in range(16)))

    asyncio.run(load())
    assert failures == []
    count, total = (a - b for a, b in zip(_batch_stats(client), before, strict=True))
    assert total == 400
    assert count < 400  # some batches held more than one request
    assert client.get("/healthz").status_code == 200


BIG = "x" * 30_000
BAD_REQUESTS = [
    (
        "too many inputs",
        "/v1/classify",
        {"json": {"model": "pii", "input": ["a"] * 9}},
        AUTH,
        413,
        "max_inputs=8",
    ),
    (
        "text too long",
        "/v1/moderations",
        {"json": {"model": "pii", "input": "a" * 201}},
        AUTH,
        413,
        "max_chars=200",
    ),
    (
        "body too large",
        "/v1/classify",
        {"json": {"model": "pii", "input": BIG}},
        AUTH,
        413,
        "max_body_bytes=20000",
    ),
    (
        "malformed JSON",
        "/v1/classify",
        {"content": b'{"model": "pii", "input": ', "headers": {"content-type": "application/json"}},
        AUTH,
        400,
        "malformed JSON body",
    ),
    ("wrong type", "/v1/classify", {"json": {"model": "pii", "input": 5}}, AUTH, 422, "input"),
    (
        "unknown model",
        "/v1/classify",
        {"json": {"model": "nope", "input": "hi"}},
        AUTH,
        404,
        "unknown model 'nope' (loaded: cats, pii)",
    ),
    (
        "a path is not a model",
        "/v1/moderations",
        {"json": {"model": "../../etc/passwd", "input": "hi"}},
        AUTH,
        404,
        "unknown model",
    ),
    (
        "empty input list",
        "/v1/classify",
        {"json": {"model": "pii", "input": []}},
        AUTH,
        422,
        "at least one text",
    ),
    (
        "streaming chat",
        "/v1/chat/completions",
        {"json": {"model": "pii", "stream": True, "messages": [{"role": "user", "content": "hi"}]}},
        AUTH,
        400,
        "streaming is not supported",
    ),
    (
        "missing API key",
        "/v1/classify",
        {"json": {"model": "pii", "input": "hi"}},
        {},
        401,
        "missing API key",
    ),
    ("wrong API key", "/v1/models", {}, {"Authorization": "Bearer nope"}, 401, "invalid API key"),
]


@pytest.mark.parametrize(
    ("path", "request_args", "headers", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_their_status_and_message(
    server, path: str, request_args: dict, headers: dict, status: int, message: str
) -> None:
    with httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=30) as http:
        response = http.request("GET" if path == "/v1/models" else "POST", path, **request_args)
        assert response.status_code == status
        assert message in response.json()["error"]["message"]
        assert http.get("/healthz").json()["status"] == "ok"  # /healthz needs no key


def test_full_queue_gets_503_and_a_stuck_request_504(guards) -> None:
    tight = ServeSettings(max_queue=1, max_batch_size=1, max_wait_ms=0, request_timeout_s=1.0)
    app = create_app(guards, tight)
    with BackgroundServer(app) as running:

        async def scenario() -> None:
            release = threading.Event()
            hold = asyncio.ensure_future(app.state.batcher.run(release.wait))  # occupy the worker
            async with httpx.AsyncClient(base_url=running.url, trust_env=False, timeout=30) as http:
                await asyncio.sleep(0.2)
                body = {"model": "pii", "input": "hi"}
                waiting = asyncio.ensure_future(http.post("/v1/classify", json=body))  # fills the queue
                await asyncio.sleep(0.2)
                full = await http.post("/v1/classify", json=body)
                assert full.status_code == 503 and full.headers["retry-after"] == "1"
                assert "queue is full" in full.json()["error"]["message"]
                late = await waiting
                assert late.status_code == 504 and "request_timeout_s=1.0" in late.json()["error"]["message"]
                release.set()
                await hold
                # The timed-out request's job holds the one queue slot until the worker, now free,
                # takes it off; on a loaded CPU that can come after the next request arrives.
                for _ in range(250):
                    if app.state.batcher.depth() == 0:
                        break
                    await asyncio.sleep(0.02)
                assert (await http.post("/v1/classify", json=body)).status_code == 200
                assert (await http.get("/healthz")).status_code == 200

        asyncio.run(scenario())


def test_schema_fuzzing_finds_no_server_error(server) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, trust_env=False) as http:
        schema = schemathesis.openapi.from_dict(http.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/classify",
        "POST /v1/moderations",
        "POST /v1/chat/completions",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(base_url=server.url, headers=AUTH)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"

        check()
    with httpx.Client(base_url=server.url, trust_env=False) as http:
        assert http.get("/healthz").status_code == 200


def test_serve_command_reports_a_bad_model_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["guardtune", "serve", "--model", f"pii={tmp_path / 'absent'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert "absent: no such model directory" in capsys.readouterr().err
