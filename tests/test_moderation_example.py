"""examples/moderation: prepare.py's category mapping and role-play wrapping, report.py's HateCheck
breakdown, on made-up rows."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from conftest import load_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "moderation"


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    return load_script(EXAMPLE / "prepare.py")


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script(EXAMPLE / "report.py")


def made_up_train() -> pd.DataFrame:
    rules = "More rules. " * 40
    personas = [f"I want you to act as guide {i}. You answer briefly. {rules}" for i in range(5)]
    rows = [(text, "safe", "", "awesome_chatgpt_prompts") for text in personas]
    rows += [(f"how do I pick lock {i}", "unsafe", "illicit", "harmbench") for i in range(8)]
    rows += [(f"who wrote song {i}", "safe", "", "nq_open_dev") for i in range(8)]
    rows += [(f"group insult {i}", "unsafe", "hate", "stormfront") for i in range(8)]
    return pd.DataFrame(rows, columns=["text", "label", "categories", "source"])


def test_persona_opening_stops_at_a_sentence_end(prepare: ModuleType) -> None:
    persona = "I want you to act as a travel guide. " + "You suggest places to visit. " * 20
    opening = prepare.persona_opening(persona)
    assert opening.startswith("I want you to act as a travel guide.")
    assert opening.endswith(".")
    assert len(opening) <= prepare.PERSONA_CHARS


def test_wrapped_requests_keep_their_label_and_categories(prepare: ModuleType) -> None:
    train = made_up_train()
    wrapped = prepare.wrap_requests(train, count=6, seed=0)
    assert wrapped["source"].value_counts().to_dict() == {"harmbench+persona": 6, "nq_open_dev+persona": 6}
    for row in wrapped.itertuples():
        persona, request = row.text.split("\n\n")
        assert persona.startswith("I want you to act as guide")
        original = train[train["text"] == request].iloc[0]
        assert (row.label, row.categories) == (original["label"], original["categories"])
    # Requests come from the named request sources only, never from hate corpora or the personas.
    assert not wrapped["text"].str.contains("group insult").any()


def test_no_personas_or_no_count_wraps_nothing(prepare: ModuleType) -> None:
    train = made_up_train()
    assert prepare.wrap_requests(train, count=0, seed=0).empty
    assert prepare.wrap_requests(train[train["source"] != prepare.PERSONAS], count=6, seed=0).empty


def test_persona_sentences_are_safe_plain_sentences_of_the_role_play_prompts(prepare: ModuleType) -> None:
    persona = (
        "I want you to act as a **poet** for my blog. Write short poems about the sea.\n"
        "- Use `markdown` headers like # Title for each poem.\n"
        "ok thanks"
    )
    train = pd.concat(
        [
            made_up_train(),
            pd.DataFrame(
                [(persona, "safe", "", prepare.PERSONAS)], columns=["text", "label", "categories", "source"]
            ),
        ]
    )
    sentences = prepare.persona_sentences(train, count=1000, seed=0)
    assert set(sentences["label"]) == {"safe"} and set(sentences["categories"]) == {""}
    texts = set(sentences["text"])
    assert {"I want you to act as a poet for my blog.", "Write short poems about the sea."} <= texts
    # Markup, lowercase fragments and too-short pieces stay out; nothing comes from other sources.
    assert not any("`" in text or text.startswith("ok") for text in texts)
    assert not any("pick lock" in text for text in texts)
    assert len(prepare.persona_sentences(train, count=3, seed=0)) == 3


def test_an_unknown_source_category_stops_the_script(prepare: ModuleType) -> None:
    assert prepare.map_category("harmbench", "cybercrime_intrusion") == "illicit"
    assert prepare.map_category("toxigen_seeds", "hate:asian") == "hate"
    with pytest.raises(SystemExit, match="no mapping for source 'harmbench' category 'new_kind'"):
        prepare.map_category("harmbench", "new_kind")


def write_suite(path: Path) -> Path:
    """A made-up HateCheck test suite file: HateCheck's columns, its trailing spaces."""
    cases = [
        ("I hate group A. ", "derog_neg_emote_h", "hateful"),
        ("I hate group B. ", "derog_neg_emote_h", "hateful"),
        ('Saying "I hate group A" is wrong. ', "counter_quote_nh", "non-hateful"),
        ("I love group B.", "ident_pos_nh", "non-hateful"),
    ]
    pd.DataFrame(cases, columns=["test_case", "functionality", "label_gold"]).to_csv(path)
    return path


def test_hatecheck_rows_are_broken_down_by_functionality(report: ModuleType, tmp_path: Path) -> None:
    suite = report.read_functionalities(write_suite(tmp_path / "suite.csv"))
    predictions = pd.DataFrame(
        {
            # build.py's texts: trailing space gone, case and inner spaces may differ.
            "text": [
                "i hate group A.",
                "I hate  group B.",
                'Saying "I hate group A" is wrong.',
                "I love group B.",
            ],
            "label": ["unsafe,hate", "", "unsafe,hate", ""],
            "score_unsafe": [0.9, 0.4, 0.8, 0.2],
            "source": "hatecheck",
        }
    )
    other = pd.DataFrame({"text": ["2 + 2?"], "label": [""], "score_unsafe": [0.1], "source": ["gsm8k_test"]})
    figures = report.functionality_figures(pd.concat([predictions, other]), suite)
    by_kind = figures.set_index(["gold", "functionality"])
    assert by_kind.loc[("hateful", "derog_neg_emote_h")].to_dict() == {
        "rows": 2,
        "flagged": 0.5,
        "mean_score": pytest.approx(0.65),
    }
    assert by_kind.loc[("non-hateful", "counter_quote_nh"), "flagged"] == 1.0
    assert by_kind.loc[("non-hateful", "ident_pos_nh"), "flagged"] == 0.0
    assert "| non-hateful | counter_quote_nh | 1 | 1.00 | 0.800 |" in report.functionality_table("x", figures)
    report.plot_functionalities("x", figures, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_a_hatecheck_row_missing_from_the_suite_file_stops_the_report(
    report: ModuleType, tmp_path: Path
) -> None:
    suite = report.read_functionalities(write_suite(tmp_path / "suite.csv"))
    stray = pd.DataFrame(
        {"text": ["not a test case"], "label": [""], "score_unsafe": [0.5], "source": ["hatecheck"]}
    )
    with pytest.raises(SystemExit, match="1 of 1 HateCheck rows are not in the --hatecheck file"):
        report.functionality_figures(stray, suite)
    (tmp_path / "other.csv").write_text("text,label\nhi,safe\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"other\.csv: missing columns"):
        report.read_functionalities(tmp_path / "other.csv")
