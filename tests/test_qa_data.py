"""QA data: FlashRAG jsonl loading (good, malformed, aliases, limit), the embedded
Wikipedia QA set (deterministic, disjoint splits, title masked, retrievable, cached) and
the FanOutQA dev questions."""

from __future__ import annotations

import json

import pytest

from rlpt_jax.data import qa
from rlpt_jax.data.jsonl import SkippedDataWarning
from rlpt_jax.data.qa import (
    EMBEDDED_DATASET,
    MASK,
    QADataError,
    QAExample,
    RejectedArticle,
    build_embedded_qa,
    embedded_qa,
    embedded_question,
    fanoutqa_answer_parts,
    fanoutqa_answer_text,
    fanoutqa_dev,
    load_qa_jsonl,
    write_qa_jsonl,
)
from rlpt_jax.rewards.qa import normalize_answer

# The toy file's broken lines warn on every load; the first test checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore::rlpt_jax.data.jsonl.SkippedDataWarning")

# ----------------------------------------------------------------------------- jsonl

TOY_LINES = [
    '{"id": "q1", "question": "Who wrote Hamlet?", "golden_answers": ["William Shakespeare"]}',
    '{"question": "Capital of France?", "answer": "Paris"}',
    '{"question": "  What is 2+2?  ", "answers": [4, "four", "four"]}',
    "   ",
    '{"question": "broken", "golden_answers": ["x"]',
    '["not", "an", "object"]',
    '{"golden_answers": ["x"]}',
    '{"question": "No answer key?"}',
    '{"question": "Only blank answers?", "golden_answers": ["", "  "]}',
    '{"question": "Answer of a bad type?", "golden_answers": [{"a": 1}]}',
    '{"question": "   ", "golden_answers": ["x"]}',
    '{"id": 7, "question": "Largest planet?", "golden_answers": "Jupiter", "answer": "no"}',
]


@pytest.fixture
def toy_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(TOY_LINES) + "\n", encoding="utf-8")
    return path


def test_jsonl_good_and_malformed_lines(toy_file):
    with pytest.warns(SkippedDataWarning, match=rf"skipped 8 .*{toy_file}:5: bad_json"):
        examples, report = load_qa_jsonl(toy_file)
    assert examples == [
        QAExample("q1", "Who wrote Hamlet?", ("William Shakespeare",), "toy"),
        QAExample("toy-2", "Capital of France?", ("Paris",), "toy"),
        QAExample("toy-3", "What is 2+2?", ("4", "four"), "toy"),
        QAExample("7", "Largest planet?", ("Jupiter",), "toy"),
    ]
    assert report.dataset == "toy"
    assert report.lines_read == 12
    assert report.loaded == 4
    assert dict(report.skipped) == {
        "empty": 1,
        "bad_json": 1,
        "not_object": 1,
        "no_question": 2,
        "no_answers": 2,
        "bad_answers": 1,
    }
    assert report.num_skipped == 8
    assert report.skipped_lines == (4, 5, 6, 7, 8, 9, 10, 11)
    assert report.examples[:2] == (
        f"{toy_file}:4: empty",
        f"{toy_file}:5: bad_json (Expecting ',' delimiter at column 1)",
    )


def test_jsonl_dataset_name(toy_file, tmp_path):
    examples, report = load_qa_jsonl(toy_file, dataset_name="mine")
    assert report.dataset == "mine" and {e.dataset for e in examples} == {"mine"}
    assert examples[1].id == "mine-2"
    # FlashRAG layout: <dataset>/<split>.jsonl is named after the folder.
    flashrag = tmp_path / "nq" / "dev.jsonl"
    flashrag.parent.mkdir()
    flashrag.write_text(TOY_LINES[1] + "\n", encoding="utf-8")
    examples, _ = load_qa_jsonl(flashrag)
    assert examples == [QAExample("nq-1", "Capital of France?", ("Paris",), "nq")]


def test_jsonl_limit(toy_file):
    examples, report = load_qa_jsonl(toy_file, limit=2)
    assert [e.id for e in examples] == ["q1", "toy-2"]
    assert report.lines_read == 2 and report.num_skipped == 0
    examples, report = load_qa_jsonl(toy_file, limit=4)
    assert len(examples) == 4 and report.lines_read == 12
    with pytest.raises(ValueError, match="limit"):
        load_qa_jsonl(toy_file, limit=0)


def test_jsonl_empty_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(QADataError, match="no usable QA example"):
        load_qa_jsonl(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(TOY_LINES[3:11]) + "\n", encoding="utf-8")
    with pytest.raises(QADataError, match="bad_json"):
        load_qa_jsonl(bad)


def test_jsonl_round_trip(toy_file, tmp_path):
    examples, _ = load_qa_jsonl(toy_file)
    out = write_qa_jsonl(examples, tmp_path / "sub" / "out.jsonl")
    again, report = load_qa_jsonl(out, dataset_name="toy")
    assert again == examples and report.num_skipped == 0
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {
        "id": "q1",
        "question": "Who wrote Hamlet?",
        "golden_answers": ["William Shakespeare"],
        "dataset": "toy",
    }


def test_example_validation():
    assert QAExample("a", "q?", ["x", "y"], "d").golden_answers == ("x", "y")
    with pytest.raises(ValueError, match="golden_answers"):
        QAExample("a", "q?", (), "d")
    with pytest.raises(ValueError, match="question"):
        QAExample("a", " ", ("x",), "d")
    with pytest.raises(ValueError, match="golden answer"):
        QAExample("a", "q?", ("x", ""), "d")


# --------------------------------------------------------------------------- embedded

NUM = 300


@pytest.fixture(scope="module")
def wiki():
    from rlpt_jax.assets import load_wiki_intros
    from rlpt_jax.envs.search import BM25Search

    docs = load_wiki_intros()
    return docs, BM25Search(docs)


@pytest.fixture(scope="module")
def built(wiki):
    docs, search = wiki
    return build_embedded_qa(num=NUM, seed=0, docs=docs, search=search)


def _all(qa_set):
    return [ex for split in qa.SPLITS for ex in qa_set.splits[split]]


def test_embedded_known_example(wiki):
    docs, _ = wiki
    text = {d["title"]: d["text"] for d in docs}
    ex = embedded_question("Tsinghua University", text["Tsinghua University"])
    assert ex.question == (
        "Which Wikipedia article begins with this sentence, where ___ replaces its title? "
        '"___ is a public research university in Haidian, Beijing, China."'
    )
    assert ex.golden_answers == ("Tsinghua University",)
    assert ex.dataset == EMBEDDED_DATASET and ex.id.startswith("wiki-")
    # Parenthetical dropped and the plural surface form accepted.
    ex = embedded_question("Protein (nutrient)", text["Protein (nutrient)"])
    assert ex.question.endswith('"___ are essential nutrients for the human body."')
    assert ex.golden_answers == ("Protein (nutrient)", "Protein", "Proteins")


def test_embedded_rejections(wiki):
    docs, _ = wiki
    text = {d["title"]: d["text"] for d in docs}
    with pytest.raises(RejectedArticle) as e:  # "Robert Leroy Johnson was ..."
        embedded_question("Robert Johnson", text["Robert Johnson"])
    assert e.value.reason == "title_not_in_sentence"
    with pytest.raises(RejectedArticle) as e:
        embedded_question("Amber", "Amber is fossilized tree resin. It is old.")
    assert e.value.reason == "too_short"
    with pytest.raises(RejectedArticle) as e:  # "a" is an article: "centaurus" leaks
        embedded_question(
            "Centaurus A", "Centaurus A is a galaxy in the constellation of Centaurus."
        )
    assert e.value.reason == "title_leaks"


def test_embedded_deterministic(wiki, built):
    docs, search = wiki
    again = build_embedded_qa(num=NUM, seed=0, docs=docs, search=search)
    assert again == built
    other = build_embedded_qa(num=NUM, seed=1, docs=docs, search=search)
    assert _all(other) != _all(built)
    # The split is a property of the article, not of the seed.
    split_of = {ex.id: s for s in qa.SPLITS for ex in built.splits[s]}
    shared = [(s, ex.id) for s in qa.SPLITS for ex in other.splits[s] if ex.id in split_of]
    assert shared and all(split_of[i] == s for s, i in shared)


def test_embedded_splits(built):
    sizes = {s: len(built.splits[s]) for s in qa.SPLITS}
    assert sum(sizes.values()) == NUM
    assert 0.7 * NUM < sizes["train"] < 0.9 * NUM and sizes["dev"] > 0 and sizes["test"] > 0
    ids = [{ex.id for ex in built.splits[s]} for s in qa.SPLITS]
    titles = [{ex.golden_answers[0] for ex in built.splits[s]} for s in qa.SPLITS]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not ids[a] & ids[b] and not titles[a] & titles[b]
    assert sum(len(i) for i in ids) == NUM


def test_embedded_titles_masked(built):
    for ex in _all(built):
        norm_q = f" {normalize_answer(ex.question)} "
        for gold in ex.golden_answers:
            assert f" {normalize_answer(gold)} " not in norm_q, (ex.id, gold)
        sentence = ex.question.split('"', 1)[1]
        assert MASK in sentence
        assert sum(1 for w in sentence.split() if MASK not in w) >= qa.MIN_WORDS


def test_embedded_retrievable(wiki, built):
    _, search = wiki
    sample = [ex for s in qa.SPLITS for ex in built.splits[s][:4]]
    results = search.search([qa.masked_sentence(ex) for ex in sample], 3)
    for ex, passages in zip(sample, results, strict=True):
        assert ex.golden_answers[0] in [p.title for p in passages], ex.question


def test_embedded_too_few_documents():
    from rlpt_jax.envs.search import BM25Search

    docs = [
        {"title": "Lighthouse", "text": "A lighthouse is a tower with a lamp guiding ships."},
        {"title": "Volcano", "text": "A volcano erupts lava and ash from a magma chamber."},
    ]
    small = build_embedded_qa(num=2, docs=docs, search=BM25Search(docs))
    assert len(_all(small)) == 2 and not small.rejected
    with pytest.raises(QADataError, match="only 2 embedded questions"):
        build_embedded_qa(num=3, docs=docs, search=BM25Search(docs))


def test_embedded_cache(tmp_path, monkeypatch, built):
    splits = {s: embedded_qa(s, num=NUM, cache=tmp_path) for s in qa.SPLITS}
    assert splits == {s: list(built.splits[s]) for s in qa.SPLITS}
    (folder,) = tmp_path.iterdir()
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["counts"] == {s: len(v) for s, v in splits.items()}

    def no_build(**kwargs):
        raise AssertionError("the cached set should be used")

    monkeypatch.setattr(qa, "build_embedded_qa", no_build)
    assert embedded_qa("dev", num=NUM, cache=tmp_path) == splits["dev"]
    with pytest.raises(ValueError, match="split"):
        embedded_qa("validation", cache=tmp_path)


# --------------------------------------------------------------------------- pairs


def test_embedded_pairs_ask_two_questions_of_one_split():
    from rlpt_jax.rewards.qa import exact_match
    from rlpt_jax.train.methods import load_questions

    singles = {s: {ex.id: ex for ex in embedded_qa(s)} for s in qa.SPLITS}
    for split in qa.SPLITS:
        pairs = qa.embedded_pairs(split)
        assert pairs == qa.embedded_pairs(split)  # deterministic
        assert [p.id for p in pairs] != [p.id for p in qa.embedded_pairs(split, seed=1)]
        used = [part.id for p in pairs for part in p.parts]
        assert len(used) == len(set(used)) and set(used) <= set(singles[split])
        assert len(pairs) >= 0.45 * len(singles[split])
        for p in pairs:
            first, second = p.parts
            assert p.dataset == qa.PAIRS_DATASET and p.question.count(MASK) >= 2
            for part in p.parts:  # each sentence quoted whole, no answer given away
                assert part.question.split('"')[1] in p.question
                for gold in part.golden_answers:
                    assert f" {normalize_answer(gold)} " not in f" {normalize_answer(p.question)} "
            a, b = first.golden_answers[0], second.golden_answers[0]
            assert p.golden_answers[0] == f"{a} and {b}"
            assert exact_match(f"{a.lower()} and the {b}", p.golden_answers) == 1.0
            assert exact_match(f"{b} and {a}", p.golden_answers) == 0.0
            assert exact_match(a, p.golden_answers) == 0.0
    assert load_questions("embedded_pairs:test", "train") == qa.embedded_pairs("test")
    assert load_questions("embedded_pairs", "dev") == qa.embedded_pairs("dev")


def test_embedded_pairs_drop_a_question_the_other_gives_away(monkeypatch):
    def question(title, sentence):
        text = qa.QUESTION_TEMPLATE.format(sentence=sentence)
        return QAExample(f"wiki-{title.lower()}", text, (title,), EMBEDDED_DATASET)

    france = question("France", "___ is a country in Western Europe with many regions.")
    river = question("Loire", "The ___ is the longest river in France by far.")
    moon = question("Moon", "The ___ is the only natural satellite of the Earth.")
    monkeypatch.setattr(qa, "embedded_qa", lambda split: [france, river])
    assert qa.embedded_pairs("test") == []  # "France" would be in the river's sentence
    monkeypatch.setattr(qa, "embedded_qa", lambda split: [france, moon])
    (pair,) = qa.embedded_pairs("test")
    assert set(pair.parts) == {france, moon}


# --------------------------------------------------------------------------- FanOutQA


def test_fanoutqa_dev():
    examples = fanoutqa_dev()
    assert len(examples) == 310
    assert len({e.id for e in examples}) == 310
    for e in examples:
        assert e.question.strip() and e.dataset == "fanoutqa"
        assert e.golden_answers and all(a.strip() for a in e.golden_answers)
    first = examples[0]
    assert first.id == "7dcbbbdc7f1120cd"
    assert first.golden_answers == (
        "Pat Burrell - Right\nMark Mulder - Left\nCorey Patterson - Left\n"
        "Jeff Austin - Right\nJD Drew - Left",
    )


def test_fanoutqa_answer_flattening():
    assert fanoutqa_answer_text(True) == "yes" and fanoutqa_answer_text(False) == "no"
    assert fanoutqa_answer_text(61.6) == "61.6" and fanoutqa_answer_text(1604898) == "1604898"
    assert fanoutqa_answer_text(["Sergio Mattarella"]) == "Sergio Mattarella"
    nested = {"a": 1, "b": ["x", "y"]}
    assert fanoutqa_answer_text(nested) == "a - 1\nb - x\ny"
    assert fanoutqa_answer_parts(nested) == ("a", "b", "1", "x", "y")
    assert fanoutqa_answer_parts(False) == ("no",)
