"""cogvideo_c.tokenizer against transformers 5.23's T5Tokenizer (fixtures: tests/reference/make_tokenizer_fixtures.py).

The fixture folder is laid out like a CogVideoX checkpoint's tokenizer/ (spiece.model + configs, no tokenizer.json)
with a small unigram model trained by the script; every id, mask and decoded string must be exactly transformers'.
"""

import json
import os
import shutil

import numpy as np
import pytest

from cogvideo_c.tokenizer import AutoTokenizer, T5Tokenizer, T5TokenizerFast

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TOK_DIR = os.path.join(FIXTURES, "tokenizer")

with open(os.path.join(FIXTURES, "tokenizer_cases.json"), encoding="utf-8") as _f:
    CASES = json.load(_f)
PROMPTS = CASES["prompts"]
LONGEST = max(range(len(PROMPTS)), key=lambda i: len(CASES["single"][i]))  # longer than 226 tokens


def golden_single(prompt):
    return CASES["single"][PROMPTS.index(prompt)]


@pytest.fixture(scope="module")
def tok():
    return T5Tokenizer.from_pretrained(TOK_DIR)


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(FIXTURES, "tokenizer_cases.npz")) as z:
        return {k: z[k] for k in z.files}


def test_vocabulary(tok):
    assert len(tok) == CASES["vocab_size"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    # sentinels follow the pieces in reverse order (<extra_id_99> first), as in the released 32100-id vocabulary
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100
    assert tok.model_max_length == 226


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_unpadded_ids_match_transformers(tok, index):
    ids = tok(PROMPTS[index])["input_ids"]
    assert ids == CASES["single"][index], f"prompt {PROMPTS[index]!r}: got {ids}, transformers {CASES['single'][index]}"


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_batch_call_matches_transformers(tok, golden, case):
    enc = tok([PROMPTS[i] for i in case["prompts"]], return_tensors="np", **case["kwargs"])
    for key in ("input_ids", "attention_mask"):
        want = golden[f"{case['name']}.{key}"]
        got = enc[key]
        assert got.dtype == np.int64 and got.shape == want.shape, (key, got.dtype, got.shape, want.shape)
        rows = np.nonzero((got != want).any(axis=1))[0]
        assert rows.size == 0, f"{key}: rows {rows.tolist()} differ, first prompt {PROMPTS[case['prompts'][rows[0]]]!r}"
    assert enc.input_ids is enc["input_ids"]


def test_pipeline_call_shape_and_eos(tok):
    """Spec §1.3: every row is 226 ids, "" -> [</s>, <pad> x 225], truncation keeps the EOS."""
    enc = tok(
        ["", PROMPTS[LONGEST]],
        padding="max_length",
        max_length=226,
        truncation=True,
        add_special_tokens=True,
        return_tensors="np",
    )
    assert enc.input_ids.shape == (2, 226)
    assert enc.input_ids[0, 0] == 1 and not enc.input_ids[0, 1:].any()
    assert enc.attention_mask[0].tolist() == [1] + [0] * 225
    long_ids = tok(PROMPTS[LONGEST])["input_ids"]
    assert len(long_ids) > 226
    assert enc.input_ids[1].tolist() == long_ids[:225] + [1]
    assert enc.attention_mask[1].all()


def test_default_truncation_is_model_max_length(tok):
    ids = tok(PROMPTS[LONGEST], truncation=True)["input_ids"]
    assert len(ids) == 226 and ids[-1] == 1


def test_batch_decode_matches_transformers(tok, golden):
    decoded = tok.batch_decode(golden["max_length_226.input_ids"], skip_special_tokens=True)
    assert decoded == CASES["batch_decode_skip_special"]
    keep = CASES["decode_keep_special"]
    assert tok.batch_decode([CASES["single"][i] for i in keep["prompts"]]) == keep["text"]


def test_return_types(tok):
    one = tok("dance monkey")
    assert isinstance(one["input_ids"], list) and isinstance(one["input_ids"][0], int)
    batch = tok(["dance monkey", "a"], padding="longest")
    assert [len(r) for r in batch.input_ids] == [len(one.input_ids)] * 2
    arr = tok("dance monkey", return_tensors="np")
    assert arr.input_ids.shape == (1, len(one.input_ids))
    assert tok("dance monkey", add_special_tokens=False)["input_ids"] == one["input_ids"][:-1]
    assert "attention_mask" not in tok("a", return_attention_mask=False)


def test_bad_calls(tok):
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="pt")
    with pytest.raises(ValueError, match="text input"):
        tok(["a", None])
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="shortest")
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "dance monkey"], return_tensors="np")
    with pytest.raises(TypeError, match="unsupported"):
        tok("a", return_offsets="yes")


def test_aliases():
    assert T5TokenizerFast is T5Tokenizer
    assert AutoTokenizer.from_pretrained(TOK_DIR)("dance monkey")["input_ids"] == golden_single("dance monkey")
    parent = os.path.dirname(TOK_DIR)
    assert T5Tokenizer.from_pretrained(parent, subfolder="tokenizer")("x")["input_ids"] == golden_single("x")


def test_tokenizer_json_folder(tok, golden, tmp_path):
    """A folder with tokenizer.json and no spiece.model (what save_pretrained writes; the fixture script checks that
    transformers gives the same ids for it) loads through the tokenizer.json path."""
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    shutil.copy(os.path.join(TOK_DIR, "tokenizer_config.json"), tmp_path)
    from_json = T5Tokenizer.from_pretrained(tmp_path)
    assert len(from_json) == len(tok)
    enc = from_json(PROMPTS, padding="max_length", max_length=226, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(enc.input_ids, golden["max_length_226.input_ids"])


def test_missing_folder(tmp_path):
    with pytest.raises(OSError, match="does not exist"):
        T5Tokenizer.from_pretrained(tmp_path / "nope")


def test_missing_spiece_model(tmp_path):
    shutil.copy(os.path.join(TOK_DIR, "tokenizer_config.json"), tmp_path)
    with pytest.raises(OSError, match="spiece.model"):
        T5Tokenizer.from_pretrained(tmp_path)


def test_corrupt_spiece_model(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        T5Tokenizer.from_pretrained(tmp_path)
