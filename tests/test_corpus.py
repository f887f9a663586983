"""Corpus readers, the array_record corpus and cleaning (rules, exact and near dedup)."""

from __future__ import annotations

import json

import pytest

from rlpt_jax.data import clean as clean_lib
from rlpt_jax.data import tfds_corpus
from rlpt_jax.data.clean import CleanConfig, clean
from rlpt_jax.data.corpus import (
    CorpusConfig,
    Document,
    EmptyCorpusError,
    load_corpus,
    read_jsonl,
    read_text_dir,
)
from rlpt_jax.data.jsonl import SkippedDataWarning

# --- readers -------------------------------------------------------------------------


def test_text_dir_skips_and_counts_bad_files(tmp_path):
    (tmp_path / "b.txt").write_text("Second document.", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("Première, in a subfolder.", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a .txt file", encoding="utf-8")
    with pytest.warns(SkippedDataWarning, match="skipped 2"):
        docs, report = read_text_dir(tmp_path)
    assert docs == [
        Document("b.txt", "Second document.", str(tmp_path / "b.txt")),
        Document("sub/a.txt", "Première, in a subfolder.", str(tmp_path / "sub" / "a.txt")),
    ]
    assert report.skipped == {"not_utf8": 1, "empty_document": 1}
    assert report.skips.examples == [
        f"{tmp_path / 'blank.txt'}: empty_document",
        f"{tmp_path / 'latin1.txt'}: not_utf8 (byte 0xe9 at offset 3)",
    ]
    assert (report.files_read, report.documents) == (4, 2)


def test_jsonl_reader_fields_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"id": "x1", "body": "First text."}),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "x2", "text": "wrong field"}),
        json.dumps({"body": 42}),
        json.dumps({"body": "   "}),
        json.dumps({"body": "No id here."}),
    ]
    (tmp_path / "part-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "part-1.jsonl").write_bytes(b'{"body": "\xff\xfe broken"}\n')
    with pytest.warns(SkippedDataWarning, match="skipped 6"):
        docs, report = read_jsonl(tmp_path, text_field="body")
    assert [(d.id, d.text) for d in docs] == [
        ("x1", "First text."),
        ("part-0.jsonl:8", "No id here."),
    ]
    assert report.skipped == {
        "bad_json": 1,
        "not_object": 1,
        "missing_text": 2,
        "empty_document": 1,
        "not_utf8": 1,
    }
    assert report.skips.examples[1] == f"{tmp_path / 'part-0.jsonl'}:4: not_object"
    # A single file works too, through the config.
    docs, _ = load_corpus(
        CorpusConfig(kind="jsonl", path=str(tmp_path / "part-0.jsonl"), text_field="body")
    )
    assert len(docs) == 2


def test_empty_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(EmptyCorpusError, match="no documents in text folder"):
        read_text_dir(tmp_path)
    (tmp_path / "only.txt").write_bytes(b"\xff\xfe\xfd")
    with pytest.raises(EmptyCorpusError, match=r"only\.txt: not_utf8"):
        read_text_dir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(EmptyCorpusError, match="no documents in jsonl corpus"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        read_text_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_corpus_config_validation_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="valid kinds"):
        CorpusConfig(kind="parquet")
    with pytest.raises(ValueError, match="needs a path"):
        CorpusConfig(kind="jsonl")
    with pytest.raises(ValueError, match="limit"):
        CorpusConfig(limit=0)
    rows = [{"id": "same", "text": "one"}, {"id": "same", "text": "two"}]
    (tmp_path / "d.jsonl").write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
    with pytest.raises(ValueError, match="unique.*'same'"):
        load_corpus(CorpusConfig(kind="jsonl", path=str(tmp_path)))


def test_embedded_wiki_intros():
    docs, report = load_corpus(CorpusConfig(kind="wiki"))
    assert len(docs) == report.documents == 10_033
    assert len({d.id for d in docs}) == len(docs)
    assert all(d.source == "wiki" and d.text.strip() for d in docs)
    limited, _ = load_corpus(CorpusConfig(kind="wiki", limit=5))
    assert limited == docs[:5]


# --- array_record corpus ------------------------------------------------------------


def test_array_record_round_trip(tmp_path):
    train = [Document(f"doc-{i}", f"Text {i}: naïve café ✓", "unit") for i in range(12)]
    held = [Document("h", "Held-out text.", "unit")]
    path = tfds_corpus.write_corpus({"train": train, "heldout": held}, tmp_path)
    assert (path / "dataset_info.json").is_file()
    assert list(path.glob("*.array_record-*"))
    source = tfds_corpus.open_corpus(path)
    assert len(source) == 12
    assert source[7] == train[7]  # random access, write order kept
    assert source[-1] == train[-1]
    assert source[2:5] == train[2:5]
    with pytest.raises(IndexError):
        source[12]
    assert list(tfds_corpus.open_corpus(path, split="heldout")) == held
    with pytest.raises(KeyError, match="stored: \\['heldout', 'train'\\]"):
        tfds_corpus.open_corpus(path, split="test")
    docs, _ = load_corpus(CorpusConfig(kind="array_record", path=str(path), limit=3))
    assert docs == train[:3]
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        tfds_corpus.open_corpus(tmp_path / "nothing")
    with pytest.raises(EmptyCorpusError, match=r"split\(s\) \['heldout'\]"):
        tfds_corpus.write_corpus({"train": train, "heldout": []}, tmp_path / "empty")


# --- cleaning ------------------------------------------------------------------------

LIGHTHOUSE = (
    "The lighthouse at the end of the northern pier was built in 1872 by a small team of "
    "masons who had travelled from the city with their tools, their families and very "
    "little money. For the first decade its lamp burned whale oil, which the keeper "
    "carried up one hundred and twelve narrow steps every evening before sunset. Storms "
    "regularly flooded the lower rooms, and the keeper kept a logbook in which he recorded "
    "the height of every wave that reached the gallery. In 1901 the oil lamp was replaced "
    "by a paraffin burner with a rotating lens, and the beam could then be seen from more "
    "than twenty miles away. The last resident keeper left in 1964, when the light was "
    "automated, and the building now houses a museum about the fishing village, its boats "
    "and the sailors who never came home."
)
# Two words changed, far apart: "whale" -> "seal", "paraffin" -> "kerosene".
LIGHTHOUSE_EDITED = LIGHTHOUSE.replace("whale", "seal").replace("paraffin", "kerosene")
ORCHARD = (
    "Apple orchards in the valley are pruned in late winter, when the trees are dormant "
    "and the cuts heal quickly. Growers remove crossing branches, open the centre of each "
    "tree to light and keep the fruiting spurs close to the trunk. A well pruned tree gives "
    "fewer but larger apples, and its fruit colours more evenly in the autumn sun."
)


def doc(i, text):
    return Document(f"d{i}", text, "t")


def test_near_duplicate_removed_unrelated_kept():
    a = clean_lib.shingles(LIGHTHOUSE, 3)
    b = clean_lib.shingles(LIGHTHOUSE_EDITED, 3)
    # 143 words -> 141 distinct 3-shingles; each changed word touches 3 of them, so
    # 135 are shared and the union has 147: Jaccard 135/147 = 0.918 > 0.8.
    assert (len(a), len(a & b), len(a | b)) == (141, 135, 147)
    docs = [doc(0, LIGHTHOUSE), doc(1, ORCHARD), doc(2, LIGHTHOUSE_EDITED)]
    result = clean(docs, CleanConfig())
    assert [d.id for d in result.documents] == ["d0", "d1"]
    assert result.dropped["near_duplicate"] == 1
    assert result.kept == 2 and result.total == 3
    # Without near dedup (or with a threshold well above 0.918) both copies stay.
    assert clean(docs, CleanConfig(near_dedup=False)).kept == 3
    assert clean(docs, CleanConfig(minhash_threshold=0.98)).kept == 3


def test_exact_duplicates_after_normalisation():
    shouted = LIGHTHOUSE.upper().replace(",", " ,")
    docs = [doc(0, ORCHARD), doc(1, LIGHTHOUSE), doc(2, shouted), doc(3, ORCHARD + "  ")]
    result = clean(docs, CleanConfig(near_dedup=False))
    assert [d.id for d in result.documents] == ["d0", "d1"]
    assert result.dropped["exact_duplicate"] == 2


def test_length_and_character_rules():
    table = "| 1 | 2 | 3 |\n" * 20  # 7 of 7 visible characters per row are not letters
    digits = "Scores: " + "12-7, " * 30  # mostly digits and punctuation
    docs = [
        doc(0, "Too short."),
        doc(1, ORCHARD),
        doc(2, table),
        doc(3, digits),
        doc(4, LIGHTHOUSE),
    ]
    result = clean(docs, CleanConfig(min_chars=20, max_chars=len(ORCHARD)))
    assert [d.id for d in result.documents] == ["d1"]
    assert result.dropped == {
        "too_short": 1,
        "too_long": 1,  # LIGHTHOUSE is longer than ORCHARD
        "non_alpha": 2,
        "exact_duplicate": 0,
        "near_duplicate": 0,
    }


def test_non_alpha_fraction():
    assert clean_lib.non_alpha_fraction("ab 12") == 0.5
    assert clean_lib.non_alpha_fraction("   ") == 0.0
    assert clean_lib.non_alpha_fraction("Été!") == 0.25


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_chars", -1),
        ("max_chars", 0),
        ("max_non_alpha_fraction", 1.5),
        ("minhash_threshold", 0.0),
        ("num_perm", 8),
        ("shingle_size", 0),
        ("minhash_threshold", 0.99),  # too few LSH bands with 128 permutations
    ],
)
def test_bad_clean_config(field, value):
    with pytest.raises(ValueError, match=field):
        CleanConfig(**{field: value})
