#!/usr/bin/env python3
"""Generate T5 tokenizer parity fixtures (a small trained SentencePiece model + transformers' ids).

Run from the repository root with the reference environment (transformers + sentencepiece, never runtime deps of
cogvideo_c):

    /tmp/cvx-reference/bin/python tests/reference/make_tokenizer_fixtures.py

Writes (tests/fixtures/tokenizer/ is deleted and recreated):
  tokenizer/spiece.model              unigram model (nmt_nfkc, <pad>=0 </s>=1 <unk>=2, no BOS), trained here on the
                                      built-in corpus below
  tokenizer/tokenizer_config.json     the files a CogVideoX checkpoint's tokenizer/ folder has (spec §7): no
  tokenizer/special_tokens_map.json   tokenizer.json, so transformers 5 converts spiece.model in from_pretrained
  tokenizer/added_tokens.json         (spec §12.7)
  tokenizer_cases.json                the prompts, the calls, transformers' unpadded ids and decoded texts
  tokenizer_cases.npz                 transformers' padded input_ids / attention_mask of each call

The corpus and the training are deterministic (one thread, no sampling/shuffling); the script checks that
transformers really loaded the trained model (a placeholder vocabulary would make every word <unk>).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import tokenizers
import transformers
from transformers import T5Tokenizer

from _reference_common import save_npz, versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures"
TOK_DIR = OUT / "tokenizer"

EXTRA_IDS = 100
VOCAB_SIZE = 600

SUBJECTS = """a panda|the cat|two dogs|an old man|a young woman|a robot|the astronaut|a small girl|the chef|
a golden retriever|a café owner|the naïve artist|a group of children|an elephant|three horses|a red fox|the knight|
a jazz band|a hummingbird|the fisherman|a ballerina|two penguins|a giant octopus|the wizard|a tiny mouse|
a skateboarder|the old lighthouse keeper|a pair of swans|a lion cub|the street musician|a camel|a monkey|
an owl|a dragon|the pilot|a firefighter|a violinist|a sleepy koala|a snowboarder|the gardener|a mermaid""".split("|")
VERBS = """plays guitar|dances|runs quickly|eats noodles|reads a book|paints a picture|walks slowly|swims|
flies a kite|sings loudly|jumps over a fence|rides a bicycle|drinks coffee|climbs a tree|builds a sandcastle|
juggles oranges|writes a letter|cooks dinner|sleeps peacefully|looks at the camera|waves hello|spins around|
chases butterflies|plays the piano|drives a vintage car|throws snowballs|carries an umbrella|laughs|
practices kung fu|feeds the pigeons|sails a boat|explores a cave|surfs a huge wave|knits a scarf|
repairs a clock|photographs the skyline|dances the tango|plays chess|rows a canoe|bakes bread""".split("|")
PLACES = """in a bamboo forest|on the beach at sunset|under the stars|in a busy city street|near a mountain lake|
inside a cozy kitchen|on Mars|in the rain|at a crowded market|in a snowy village|beside a waterfall|
on a rooftop in Tokyo|in an ancient temple|at the bottom of the ocean|in a neon-lit alley|on a frozen pond|
in a field of sunflowers|inside a spaceship|in the desert at noon|at a medieval castle|in Paris near the Eiffel Tower|
in a library full of dusty books|on a foggy morning|in a tropical jungle|at a country fair|under a cherry tree|
in São Paulo|in Zürich|in Kraków|in Reykjavík|at the North Pole|on a moving train""".split("|")
STYLES = """cinematic lighting|slow motion|4K, highly detailed|soft focus|drone shot|close-up|wide angle|
in the style of an oil painting|black and white film|warm golden hour light|shallow depth of field|
vibrant colors|time-lapse|handheld camera|35mm film grain|dramatic shadows|pastel tones|studio lighting""".split("|")
EXTRAS = [
    "The video shows 3 scenes; each lasts 2.5 seconds.",
    "It costs $20, €18 or £15 (about 2,000 yen).",
    "Frame 1/49: the camera pans left, then right!",
    "Is it real? No, it's a dream... or is it?",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159",
    "Email: someone@example.com, web: https://example.org/path?x=1&y=2",
    "Ångström, déjà vu, crème brûlée, jalapeño, façade, coöperate.",
    "熊猫 在 竹林 里 弹 吉他。",
    "Greek letters α β γ δ and Cyrillic привет мир.",
    "A quote: “Hello,” she said — ‘goodbye’.",
    "snake_case, CamelCase, kebab-case and UPPER CASE words.",
    "Mixed (parentheses), [brackets], {braces} and <angles>.",
    "dance monkey, dance!",
]


def corpus() -> list[str]:
    """A few hundred deterministic prompt-like sentences (the vocabulary comes from these)."""
    rng = random.Random(20240826)
    lines = []
    for i in range(700):
        s = f"{rng.choice(SUBJECTS).strip()} {rng.choice(VERBS).strip()} {rng.choice(PLACES).strip()}"
        if i % 3 == 0:
            s += ", " + rng.choice(STYLES).strip()
        if i % 7 == 0:
            s = s.upper() if i % 2 else s.capitalize()
        lines.append(s + ".")
    return lines + EXTRAS * 5


def train_spiece() -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        # the T5 layout (spec §5.2)
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_name="nmt_nfkc",
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return buf.getvalue()


def write_tokenizer_folder(model: bytes) -> int:
    """Write the files of a hub T5 tokenizer folder (as the CogVideoX checkpoints have them)."""
    TOK_DIR.mkdir(parents=True)
    (TOK_DIR / "spiece.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    extra = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    added = {f"<extra_id_{i}>": n + EXTRA_IDS - 1 - i for i in range(EXTRA_IDS)}

    def entry(content):
        return dict(content=content, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)

    decoder = {str(i): entry(sp.id_to_piece(i)) for i in range(3)}
    decoder.update({str(i): entry(t) for t, i in sorted(added.items(), key=lambda kv: kv[1])})
    config = {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": True,
        "eos_token": "</s>",
        "extra_ids": EXTRA_IDS,
        "legacy": True,
        "model_max_length": 226,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }
    special = {"additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    for name, obj in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special),
        ("added_tokens.json", added),
    ):
        (TOK_DIR / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return n


LONG = (
    "A panda, dressed in a small, red jacket and a tiny hat, sits on a wooden stool in a serene bamboo forest. "
    "The panda's fluffy paws strum a miniature acoustic guitar, producing soft, melodic tunes. Nearby, a few other "
    "pandas gather, watching curiously and some clapping in rhythm. Sunlight filters through the tall bamboo, "
    "casting a gentle glow on the scene. The panda's face is expressive, showing concentration and joy as it plays. "
    "The background includes a small, flowing stream and vibrant green foliage, enhancing the peaceful and magical "
    "atmosphere of this unique musical performance."
)

PROMPTS = [
    "",
    " ",
    "   \t\n  ",
    "dance monkey",
    "Dance Monkey",
    "DANCE MONKEY",
    "dance  monkey",
    "a panda playing guitar in a bamboo forest",
    "A  panda   playing    guitar",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nhere",
    "multiple\n\nparagraphs\n\n\nhere\n",
    "Hello, world! How's it going? (fine); [ok] {yes} <no>",
    "numbers 0 1 2 10 42 3.14 1,000,000 2024-05-06 12:30",
    "café naïve résumé façade Ångström",
    "decomposed: cafe\u0301 and A\u030angstro\u0308m",
    "中文提示：一只熊猫在竹林里弹吉他",
    "日本語のテキスト と 한국어",
    "emoji 🐼🎸🔥 and ❤️ and 👍🏽",
    "full-width ＡＢＣ１２３ and half-width ｶﾀｶﾅ",
    "ligatures ﬁne ﬂow, circled ①, super ², fraction ½, Ⅻ, ㍿",
    "non-breaking\u00a0space, thin\u2009space, ideographic\u3000space",
    "zero\u200bwidth, soft\u00adhyphen, joiner\u200dhere, bom\ufeffhere",
    "NEL\u0085line, line\u2028separator, ogham\u1680space, narrow\u202fnbsp",
    "control\x07bell and \x1bescape and nul\x00char",
    "quotes “curly” ‘single’ «guillemets» — em dash … ellipsis",
    "hyphen\u2010nonbreaking\u2011 minus\u2212sign",
    "special tokens </s> <pad> <unk> inline",
    "sentinels <extra_id_0> and <extra_id_99> and <extra_id_100>",
    "<extra_id_5>start and end</s>",
    "full-width look-alikes ＜extra_id_0＞ ＜/s＞",
    "x",
    ".",
    "▁ already has metaspace ▁▁ chars",
    "under_score snake_case CamelCase kebab-case",
    "URL https://example.com/path?q=1&b=2#frag and someone@example.org",
    "math: a+b=c, x^2, 5% 100$ €20 £3 ¥4",
    "repeated letters aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ALL CAPS SENTENCE ABOUT A CAT IN THE RAIN",
    "mIxEd CaSe WoRdS",
    "Greek αβγ Cyrillic привет Arabic مرحبا Hebrew שלום",
    "backslash \\ slash / pipe | tilde ~ backtick `",
    "a robot dances in a neon-lit alley, cinematic lighting.",
    "dance monkey " * 12,
    LONG,
    (LONG + " ") * 2,
    "wordwithoutanyspacesthatgoesonandonforquiteawhilewithoutstopping" * 3,
    "Tab-only\t",
    "\n",
    "Ærøskøbing, Œuvre, straße, ĳssel, ǅ",
    "Thai ภาษาไทย Hindi हिन्दी Devanagari",
]

SHORT_MAX = 32


def main():
    if OUT.joinpath("tokenizer").exists():
        shutil.rmtree(TOK_DIR)
    OUT.joinpath("tokenizer_cases.json").unlink(missing_ok=True)
    OUT.joinpath("tokenizer_cases.npz").unlink(missing_ok=True)

    model = train_spiece()
    n_pieces = write_tokenizer_folder(model)
    tok = T5Tokenizer.from_pretrained(str(TOK_DIR))
    assert len(tok) == n_pieces + EXTRA_IDS, (len(tok), n_pieces)
    assert 2 not in tok("a panda plays guitar").input_ids, "transformers did not load the trained spiece.model"

    sp = spm.SentencePieceProcessor(model_proto=model)

    # A folder with a tokenizer.json (what save_pretrained writes) must tokenise the same; tests/test_tokenizer.py
    # relies on this to check cogvideo_c's tokenizer.json reader without storing a second, larger fixture.
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        assert os.path.isfile(os.path.join(tmp, "tokenizer.json"))
        if os.path.isfile(os.path.join(tmp, "spiece.model")):
            os.remove(os.path.join(tmp, "spiece.model"))
        tok_json = T5Tokenizer.from_pretrained(tmp)
        assert tok_json(PROMPTS)["input_ids"] == tok(PROMPTS)["input_ids"], "tokenizer.json folder differs"

    arrays = {}
    cases = []

    def call(name, prompt_indices, **kw):
        enc = tok([PROMPTS[i] for i in prompt_indices], return_tensors="np", **kw)
        for key in ("input_ids", "attention_mask"):
            assert enc[key].dtype == np.int64, enc[key].dtype
            arrays[f"{name}.{key}"] = enc[key]
        cases.append({"name": name, "prompts": list(prompt_indices), "kwargs": kw})

    everything = range(len(PROMPTS))
    for max_length in (226, SHORT_MAX):
        # exactly as the pipeline calls it (spec §1.3), the whole list as one batch
        call(
            f"max_length_{max_length}",
            everything,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
        )
    for start in range(0, len(PROMPTS), 10):
        # padding to the longest of a sub-batch, no truncation (the pipeline's truncation-warning call)
        call(f"longest_{start}", range(start, min(start + 10, len(PROMPTS))), padding="longest")

    single = [tok(p)["input_ids"] for p in PROMPTS]  # unpadded, untruncated, lists
    decoded = tok.batch_decode(arrays["max_length_226.input_ids"], skip_special_tokens=True)
    decoded_special = tok.batch_decode([single[i] for i in (3, 27, 28)])

    # The alternative backend: plain sentencepiece plus the EOS id. Recorded to document the choice of library.
    spm_mismatch = [i for i, p in enumerate(PROMPTS) if sp.encode(p) + [1] != single[i]]

    data = {
        "versions": versions(transformers, tokenizers, spm, np),
        "vocab_size": len(tok),
        "prompts": PROMPTS,
        "single": single,
        "cases": cases,  # arrays in tokenizer_cases.npz as "<name>.input_ids" / "<name>.attention_mask"
        "batch_decode_skip_special": decoded,
        "decode_keep_special": {"prompts": [3, 27, 28], "text": decoded_special},
        "sentencepiece_mismatch": spm_mismatch,
    }
    with open(OUT / "tokenizer_cases.json", "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    save_npz(OUT / "tokenizer_cases.npz", arrays, force_zip64=False)  # as the stored file was written
    print(
        f"{n_pieces} pieces + {EXTRA_IDS} sentinels, {len(PROMPTS)} prompts; "
        f"plain sentencepiece differs on {len(spm_mismatch)}: {[PROMPTS[i] for i in spm_mismatch]}"
    )


if __name__ == "__main__":
    main()
