"""T5 tokenizer with the ids of transformers 5's ``T5Tokenizer`` (spec §1.3, §5.2, §12.7), without transformers.

transformers 5 backs ``T5Tokenizer`` with the ``tokenizers`` library and, in ``from_pretrained``, converts
``spiece.model`` into a ``tokenizers.Tokenizer``: a Unigram model over the SentencePiece pieces followed by the
``<extra_id_N>`` sentinels in reverse order (``<extra_id_99>`` first), the model's precompiled normaliser, a
``WhitespaceSplit`` + ``Metaspace(prepend "always")`` pre-tokeniser, ``</s>`` appended by a template post-processor,
and ``<pad>``/``</s>``/``<unk>``/control pieces/sentinels as special added tokens (matched in the raw text before
normalisation). This module builds the same ``tokenizers.Tokenizer`` from the same files, so the ids are the ones
transformers gives, including the cases where plain ``sentencepiece`` differs: special-token strings such as ``</s>``
or ``<extra_id_0>`` inside a prompt, and Unicode whitespace outside the normaliser's map (U+0085, U+1680, U+2028,
U+202F, ...), which ``WhitespaceSplit`` treats as a separator and SentencePiece does not.

``spiece.model`` is read with a small protobuf reader below (only the fields transformers uses), so neither
``sentencepiece`` nor ``protobuf`` is needed at run time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import struct
from typing import Any

import numpy as np

from ._files import read_bytes, read_json
from .configuration import config_bool, config_int

try:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
except ImportError:  # reported when a tokenizer is constructed
    Tokenizer = None

__all__ = ["AutoTokenizer", "BatchEncoding", "T5Tokenizer", "T5TokenizerFast"]

SPIECE_MODEL = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

# SentencePiece piece types (sentencepiece_model.proto): transformers makes CONTROL and USER_DEFINED pieces added
# tokens, special only for CONTROL.
_PIECE_CONTROL = 3
_PIECE_USER_DEFINED = 4

_TRUNCATION_STRATEGIES = {"longest_first", "only_first", "only_second"}
# padded rows are materialised as int64 arrays: past this, padding is a mistake (CogVideoX uses 226)
MAX_PADDED_LENGTH = 1 << 20
_MISSING = object()

# T5 adds 100 sentinels; each one is an added token of the tokenizers library (about 1.5 KB): far more is a broken
# config, refused before building anything
MAX_EXTRA_IDS = 10_000
_CALL_OPTIONS = {"return_token_type_ids", "verbose", "return_length", "return_special_tokens_mask", "stride"}


# ---------------------------------------------------------------------------------------------------------------------
# spiece.model (a serialized sentencepiece ModelProto)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _proto_fields(buf: bytes):
    """Yields (field number, wire type, value) of one protobuf message; value is int for varint/fixed, bytes else."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield field, wire, value


def read_spiece_model(path: str) -> tuple[list[tuple[str, float]], list[int], bytes | None]:
    """Pieces with scores, piece types and the precompiled normaliser charsmap of a SentencePiece model file."""
    data = read_bytes(path)
    pieces: list[tuple[str, float]] = []
    types: list[int] = []
    charsmap = None
    try:
        for field, wire, value in _proto_fields(data):
            if field == 1 and wire == 2:  # repeated SentencePiece pieces
                piece, score, kind = None, 0.0, 1  # proto defaults: score 0, type NORMAL
                for f2, w2, v2 in _proto_fields(value):
                    if f2 == 1 and w2 == 2:
                        piece = v2.decode("utf-8")
                    elif f2 == 2 and w2 == 5:
                        score = struct.unpack("<f", v2)[0]
                    elif f2 == 3 and w2 == 0:
                        kind = v2
                if piece is None:
                    raise ValueError("piece without text")
                pieces.append((piece, score))
                types.append(kind)
            elif field == 3 and wire == 2:  # NormalizerSpec
                for f2, w2, v2 in _proto_fields(value):
                    if f2 == 2 and w2 == 2:
                        charsmap = bytes(v2) or None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a SentencePiece model: {e}") from None
    if not pieces:
        raise ValueError(f"{path} is not a SentencePiece model: it has no pieces")
    _check_charsmap(charsmap, path)
    return pieces, types, charsmap


def _read_tokenizer_json(path: str) -> tuple[list[tuple[str, float]], bytes | None, Any]:
    """Vocabulary, charsmap and post-processor of a tokenizer.json, the parts transformers 5's T5Tokenizer keeps."""
    spec = read_json(path)
    model = spec.get("model")
    if not isinstance(model, dict) or model.get("type") != "Unigram" or not isinstance(model.get("vocab"), list):
        raise ValueError(f"{path}: expected a Unigram model with a [piece, score] vocabulary")
    vocab = []
    for i, entry in enumerate(model["vocab"]):
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or isinstance(entry[1], bool)
            or not isinstance(entry[1], (int, float))
            or not math.isfinite(entry[1])
        ):
            raise ValueError(f"{path}: model.vocab[{i}] must be a [piece, score] pair, got {entry!r:.80}")
        vocab.append((entry[0], float(entry[1])))
    charsmap = None
    norm = spec.get("normalizer") or {}
    if not isinstance(norm, dict):
        raise ValueError(f"{path}: 'normalizer' must be an object, got {type(norm).__name__}")
    for n in norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]:
        if isinstance(n, dict) and n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            try:
                charsmap = base64.b64decode(n["precompiled_charsmap"], validate=True)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: normalizer 'precompiled_charsmap' is not base64: {err}") from None
            break
    _check_charsmap(charsmap, path)
    with _library_errors(path):
        post = Tokenizer.from_file(path).post_processor
    return vocab, charsmap, post


def _check_charsmap(charsmap: bytes | None, path: str) -> None:
    """The tokenizers library accepts a malformed precompiled charsmap and panics on its first use: use it once on
    varied text while loading, so that the file is named then."""
    if charsmap and Tokenizer is not None:  # without the library, T5Tokenizer() says what to install
        with _library_errors(path):
            normalizers.Precompiled(charsmap).normalize_str("Probe: ａ text, 12 ½ éè\u3000ﬁ.")


@contextlib.contextmanager
def _library_errors(source):
    """Around calls into the tokenizers library. Its Rust panics surface as pyo3's PanicException, a BaseException
    that escapes `except Exception`: any failure in there becomes a ValueError naming the file; Ctrl-C and exit still
    pass through."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # noqa: BLE001 - PanicException derives from BaseException only
        raise ValueError(f"{source}: the tokenizers library rejected it ({type(err).__name__}: {err})") from None


def _check_added_tokens(table, where: str) -> dict:
    """tokenizer_config.json's added_tokens_decoder: {"<id>": "content" | {"content": ..., flags}}."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be an object of id -> token, got {type(table).__name__}")
    for key, token in table.items():
        if not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
            raise ValueError(f"{where} has a key {key!r} that is not a token id")
        _token_content(token, f"{where}[{key!r}]")
    return table


def _token_content(token, where: str = "token") -> str | None:
    """A special token as a string: a string, or an AddedToken dict's "content" (anything else is refused)."""
    if token is None:
        return None
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    raise ValueError(f"{where} must be a string or an object with a string 'content', got {token!r:.80}")


def _added_token(content: str, special: bool, spec: dict | None = None) -> AddedToken:
    spec = spec or {}
    return AddedToken(
        content,
        single_word=bool(spec.get("single_word", False)),
        lstrip=bool(spec.get("lstrip", False)),
        rstrip=bool(spec.get("rstrip", False)),
        normalized=bool(spec.get("normalized", False)),
        special=special,
    )


# ---------------------------------------------------------------------------------------------------------------------


class BatchEncoding(dict):
    """The dict transformers returns from a tokenizer call; keys are also attributes (``enc.input_ids``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class T5Tokenizer:
    """transformers' ``T5Tokenizer`` (5.x): same files, same ids, the call/decode API the CogVideoX pipeline uses."""

    vocab_files_names = {"vocab_file": SPIECE_MODEL, "tokenizer_file": TOKENIZER_JSON}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab: list[tuple[str, float]],
        precompiled_charsmap: bytes | None = None,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
        extra_ids: int = 100,
        sentinels_in_vocab: bool = False,
        control_tokens: tuple[str, ...] = (),
        user_defined_tokens: tuple[str, ...] = (),
        added_tokens_decoder: dict | None = None,
        post_processor=None,
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str = "",
    ):
        if Tokenizer is None:
            raise ImportError("cogvideo_c's T5 tokenizer needs the `tokenizers` package: pip install tokenizers")
        source = name_or_path or type(self).__name__
        extra_ids = config_int(extra_ids, "extra_ids", 0, MAX_EXTRA_IDS, source=source)
        vocab = list(vocab)
        if sentinels_in_vocab and extra_ids > len(vocab):
            raise ValueError(f"{source}: extra_ids = {extra_ids} sentinels cannot end a vocabulary of {len(vocab)}")
        sentinels = [f"<extra_id_{i}>" for i in range(extra_ids - 1, -1, -1)]
        if not sentinels_in_vocab:  # from spiece.model; a tokenizer.json vocabulary already ends with them
            vocab += [(t, 0.0) for t in sentinels]
        added_tokens_decoder = _check_added_tokens(added_tokens_decoder, f"{source}: 'added_tokens_decoder'")
        with _library_errors(source):
            self._build_backend(
                vocab, precompiled_charsmap, eos_token, unk_token, pad_token, sentinels, control_tokens,
                user_defined_tokens, added_tokens_decoder,
            )  # fmt: skip
        eos_id = self._tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"the vocabulary has no EOS token {eos_token!r}")
        with _library_errors(source):
            self._tokenizer.post_processor = post_processor or processors.TemplateProcessing(
                single=["$A", eos_token], pair=["$A", eos_token, "$B", eos_token], special_tokens=[(eos_token, eos_id)]
            )
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self._extra_ids = extra_ids
        if model_max_length is not None and (
            isinstance(model_max_length, bool)
            or not isinstance(model_max_length, (int, float))
            or not model_max_length >= 1
            or model_max_length == float("inf")
        ):
            raise ValueError(f"{source}: 'model_max_length' must be a positive number, got {model_max_length!r}")
        self.model_max_length = int(model_max_length) if model_max_length is not None else int(1e30)
        self.clean_up_tokenization_spaces = config_bool(
            clean_up_tokenization_spaces, "clean_up_tokenization_spaces", source
        )
        self.name_or_path = name_or_path

    def _build_backend(
        self, vocab, precompiled_charsmap, eos_token, unk_token, pad_token, sentinels, control_tokens,
        user_defined_tokens, added_tokens_decoder,
    ):  # fmt: skip
        """The tokenizers.Tokenizer transformers 5 builds: Unigram, normaliser, pre-tokeniser, added tokens."""
        self._tokenizer = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
        if precompiled_charsmap:
            self._tokenizer.normalizer = normalizers.Precompiled(precompiled_charsmap)
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            ]
        )
        self._tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)

        # Added tokens in transformers' order: the configured decoder table, then named specials, control and
        # user-defined pieces, sentinels. All of them normally exist in the vocabulary and keep its ids.
        specs = {_token_content(v): v if isinstance(v, dict) else {} for v in added_tokens_decoder.values()}
        plan: dict[str, bool] = {}
        for _, token in sorted(((int(k), v) for k, v in added_tokens_decoder.items()), key=lambda kv: kv[0]):
            spec = token if isinstance(token, dict) else {}
            plan[_token_content(token)] = bool(spec.get("special", True))
        for content in (pad_token, eos_token, unk_token, *control_tokens, *sentinels[::-1]):
            plan.setdefault(content, True)
        for content in user_defined_tokens:
            plan.setdefault(content, False)
        self._tokenizer.add_special_tokens([_added_token(c, True, specs.get(c)) for c, s in plan.items() if s])
        self._tokenizer.add_tokens([_added_token(c, False, specs.get(c)) for c, s in plan.items() if not s])

    # -- loading ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs):
        """Loads a local tokenizer folder (a checkpoint's ``tokenizer/``: spiece.model and/or tokenizer.json).

        As in transformers 5, tokenizer.json wins over spiece.model when both are present. Keyword arguments
        override tokenizer_config.json entries (``model_max_length``, ``extra_ids``, ...); hub downloads are not
        supported (``cache_dir``, ``revision`` and similar are ignored).
        """
        for ignored in ("cache_dir", "revision", "local_files_only", "token", "force_download", "trust_remote_code"):
            kwargs.pop(ignored, None)
        folder = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise OSError(
                f"tokenizer folder {folder!r} does not exist (cogvideo_c loads local checkpoints only; download it "
                "first, e.g. with `huggingface-cli download`)"
            )
        config, sources = {}, {}
        for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):  # the config's entries win
            path = os.path.join(folder, name)
            if os.path.lexists(path):  # present but a FIFO, a directory, ... is an error, not an absence
                before = dict(config)
                config.update(read_json(path))
                sources.update({k: path for k, v in config.items() if before.get(k, _MISSING) is not v})
        config.update(kwargs)
        sources.update(dict.fromkeys(kwargs, "from_pretrained"))

        def where(key):  # errors name the file (or the argument) a value came from
            return f"{sources.get(key, folder)}: '{key}'"

        spiece = os.path.join(folder, SPIECE_MODEL)
        tok_json = os.path.join(folder, TOKENIZER_JSON)
        control, user_defined, post = (), (), None
        if os.path.lexists(tok_json):
            vocab, charsmap, post = _read_tokenizer_json(tok_json)
            sentinels_in_vocab = True
        elif os.path.lexists(spiece):
            vocab, types, charsmap = read_spiece_model(spiece)
            control = tuple(p for (p, _), t in zip(vocab, types) if t == _PIECE_CONTROL)
            user_defined = tuple(p for (p, _), t in zip(vocab, types) if t == _PIECE_USER_DEFINED)
            sentinels_in_vocab = False
        else:
            raise OSError(f"tokenizer folder {folder!r} has neither {SPIECE_MODEL} nor {TOKENIZER_JSON}")

        return cls(
            vocab,
            precompiled_charsmap=charsmap,
            eos_token=_token_content(config.get("eos_token"), where("eos_token")) or "</s>",
            unk_token=_token_content(config.get("unk_token"), where("unk_token")) or "<unk>",
            pad_token=_token_content(config.get("pad_token"), where("pad_token")) or "<pad>",
            extra_ids=config_int(
                config.get("extra_ids", 100), "extra_ids", 0, MAX_EXTRA_IDS, source=sources.get("extra_ids", folder)
            ),
            sentinels_in_vocab=sentinels_in_vocab,
            control_tokens=control,
            user_defined_tokens=user_defined,
            added_tokens_decoder=_check_added_tokens(config.get("added_tokens_decoder"), where("added_tokens_decoder")),
            post_processor=post,
            model_max_length=config.get("model_max_length"),
            clean_up_tokenization_spaces=config_bool(
                config.get("clean_up_tokenization_spaces", False),
                "clean_up_tokenization_spaces",
                sources.get("clean_up_tokenization_spaces", folder),
            ),
            name_or_path=folder,
        )

    # -- vocabulary ---------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """The vocabulary size with the added tokens (the sentinels and special tokens), as transformers'."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The base vocabulary size, without added tokens (transformers' ``vocab_size``)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    @property
    def backend_tokenizer(self):
        """The underlying ``tokenizers.Tokenizer`` (as transformers' fast tokenizers expose it)."""
        return self._tokenizer

    def get_vocab(self) -> dict[str, int]:
        """{token: id} for every token, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens):
        """The id of a token (a str), or the list of ids of a list of tokens; unknown tokens map to unk_token_id."""
        if isinstance(tokens, str):
            found = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """The token of an id (an int), or the list of tokens of a list of ids (special ones dropped when
        skip_special_tokens)."""
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in special]

    @property
    def eos_token_id(self) -> int:
        """The id of ``</s>`` (1 for T5), appended to every encoded text."""
        return self._tokenizer.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int:
        """The id of ``<pad>`` (0 for T5), used by padding."""
        return self._tokenizer.token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int:
        """The id of ``<unk>`` (2 for T5)."""
        return self._tokenizer.token_to_id(self.unk_token)

    @property
    def all_special_ids(self) -> list[int]:
        """The sorted ids of the special added tokens (pad, eos, unk and the sentinels)."""
        return sorted(i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special)

    def get_sentinel_tokens(self) -> list[str]:
        """``<extra_id_0>`` ... ``<extra_id_{extra_ids - 1}>``, T5's span-corruption sentinels."""
        return [f"<extra_id_{i}>" for i in range(self._extra_ids)]

    def get_sentinel_token_ids(self) -> list[int]:
        """The ids of ``get_sentinel_tokens()``, in the same order."""
        return self.convert_tokens_to_ids(self.get_sentinel_tokens())

    # -- encoding -----------------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str] | tuple[str, ...],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenises like transformers' ``tokenizer(text, ...)``: ``input_ids`` and ``attention_mask``.

        Args:
            text (`str` or `list[str]`): one text or a batch.
            padding (`bool` or `str`, defaults to False): False/"do_not_pad", True/"longest", or "max_length"
                (pads to max_length, what the CogVideoX pipeline uses).
            truncation (`bool` or `str`, *optional*): True/"longest_first"/"only_first" cut to max_length;
                False/None keep everything.
            max_length (`int`, *optional*): the length for padding/truncation (default: model_max_length, 226 for
                CogVideoX).
            add_special_tokens (`bool`, defaults to True): append ``</s>``.
            return_tensors (`str`, *optional*): None (lists) or "np" (int64 arrays); "pt" is refused (no torch).
            return_attention_mask (`bool`, *optional*): include attention_mask (default: yes).
            pad_to_multiple_of (`int`, *optional*): round padded lengths up to a multiple of it.
            padding_side (`str`, *optional*): "right" (default) or "left".

        Returns:
            `BatchEncoding`: a dict with input_ids (and attention_mask, special_tokens_mask when asked), also
            readable as attributes.
        """
        unknown = set(kwargs) - _CALL_OPTIONS
        if unknown:
            raise TypeError(f"unsupported tokenizer arguments: {sorted(unknown)}")
        if kwargs.get("return_token_type_ids") or kwargs.get("return_length") or kwargs.get("stride"):
            raise ValueError("return_token_type_ids, return_length and stride are not supported")
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(
                "text input must be of type `str` (single example) or `list[str]`/`tuple[str]` (batch), got "
                f"{type(text).__name__}" + (f" of {sorted({type(t).__name__ for t in texts})}" if batched else "")
            )
        if return_tensors not in (None, "np"):
            raise ValueError(
                f"return_tensors={return_tensors!r} is not supported: cogvideo_c has no torch/tf/jax at run time; "
                "use return_tensors='np' (or None for lists)"
            )

        pad_mode = {True: "longest", False: "do_not_pad", None: "do_not_pad"}.get(padding, padding)
        if pad_mode not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        trunc_mode = {True: "longest_first", False: None, None: None, "do_not_truncate": None}.get(
            truncation, truncation
        )
        if trunc_mode is not None and trunc_mode not in _TRUNCATION_STRATEGIES:
            raise ValueError(
                f"truncation must be a bool or one of {sorted(_TRUNCATION_STRATEGIES)}, got {truncation!r}"
            )
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))):
            raise ValueError(f"max_length must be an integer, got {max_length!r}")
        if max_length is None and (trunc_mode is not None or pad_mode == "max_length"):
            max_length = self.model_max_length  # transformers' default, 226 for CogVideoX
        if trunc_mode is not None and max_length >= 2**63:
            # no text reaches it (the library takes 64-bit lengths): transformers then does not truncate either
            trunc_mode = None
        if max_length is not None and trunc_mode is not None and add_special_tokens and max_length < 1:
            raise ValueError(f"max_length={max_length} leaves no room for the EOS token")
        if pad_mode == "max_length" and max_length >= int(1e30):
            raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
        if pad_mode == "max_length" and max_length > MAX_PADDED_LENGTH:
            raise ValueError(
                f"padding='max_length' to {max_length} tokens (max_length, or tokenizer_config.json's "
                f"model_max_length) is more than the {MAX_PADDED_LENGTH} this tokenizer pads to"
            )
        side = padding_side or self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")

        tok = self._tokenizer
        try:
            if trunc_mode is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(max_length, stride=0, strategy=trunc_mode, direction=self.truncation_side)
            if pad_mode == "do_not_pad":
                tok.no_padding()
            else:
                tok.enable_padding(
                    direction=side,
                    pad_id=self.pad_token_id,
                    pad_type_id=0,
                    pad_token=self.pad_token,
                    length=max_length if pad_mode == "max_length" else None,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            with _library_errors(self.name_or_path or type(self).__name__):
                encodings = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            tok.no_truncation()
            tok.no_padding()

        ids = [e.ids for e in encodings]
        masks = [e.attention_mask for e in encodings]
        if return_tensors == "np":
            if len({len(r) for r in ids}) > 1:
                raise ValueError(
                    "rows of different lengths cannot form an array: use padding=True or padding='max_length' "
                    "with truncation=True"
                )
            ids = np.asarray(ids, dtype=np.int64).reshape(len(ids), -1)
            masks = np.asarray(masks, dtype=np.int64).reshape(len(masks), -1)
        elif not batched:
            ids, masks = ids[0], masks[0]
        out = BatchEncoding(input_ids=ids)
        if return_attention_mask is None or return_attention_mask:
            out["attention_mask"] = masks
        if kwargs.get("return_special_tokens_mask"):
            sm = [e.special_tokens_mask for e in encodings]
            out["special_tokens_mask"] = (
                np.asarray(sm, dtype=np.int64) if return_tensors == "np" else (sm if batched else sm[0])
            )
        return out

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs) -> list[int]:
        """The ids of one text (``self(text, ...)["input_ids"]``); keyword arguments as for calling the tokenizer."""
        return self(text, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The SentencePiece tokens of a text (``▁``-prefixed pieces), without ``</s>`` unless asked."""
        with _library_errors(self.name_or_path or type(self).__name__):
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).tokens

    # -- decoding -----------------------------------------------------------------------------------------------------

    def decode(
        self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        """The text of a sequence of ids (a list, an array or one int).

        Args:
            token_ids (`int`, `list[int]` or `np.ndarray`): the ids.
            skip_special_tokens (`bool`, defaults to False): drop pad, eos, unk and sentinel tokens.
            clean_up_tokenization_spaces (`bool`, *optional*): remove spaces before punctuation (default: the
                tokenizer config's setting).
        """
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [token_ids]
        ids = [int(i) for i in np.asarray(token_ids).reshape(-1)]
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        cleanup = (
            self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        )
        return self.clean_up_tokenization(text) if cleanup else text

    def batch_decode(
        self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        """``decode`` of each sequence of a batch (a list of lists or a 2-D array)."""
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """transformers' ``PreTrainedTokenizerBase.clean_up_tokenization`` (applied when the config asks for it)."""
        for a, b in (
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ):
            text = text.replace(a, b)
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={len(self)}, "
            f"model_max_length={self.model_max_length})"
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        """Writes the tokenizer files it was loaded from (spiece.model and/or tokenizer.json, special_tokens_map.json,
        added_tokens.json) into save_directory, and tokenizer_config.json with the current model_max_length and
        extra_ids, so that from_pretrained(save_directory) gives the same ids. Returns the written paths."""
        import shutil

        source = self.name_or_path
        if not source or not os.path.isdir(source):
            raise ValueError(
                f"this tokenizer was not loaded from a folder ({source!r}): save_pretrained copies the files it was "
                "loaded from"
            )
        os.makedirs(save_directory, exist_ok=True)
        written = []
        for name in (SPIECE_MODEL, TOKENIZER_JSON, SPECIAL_TOKENS_MAP, "added_tokens.json"):
            src = os.path.join(source, name)
            if os.path.isfile(src):
                dst = os.path.join(save_directory, name)
                if not (os.path.exists(dst) and os.path.samefile(src, dst)):
                    shutil.copyfile(src, dst)
                written.append(dst)
        config = {}
        src_config = os.path.join(source, TOKENIZER_CONFIG)
        if os.path.isfile(src_config):
            with open(src_config, encoding="utf-8") as f:
                config = json.load(f)
        config.update(model_max_length=self.model_max_length, extra_ids=self._extra_ids)
        config.setdefault("tokenizer_class", "T5Tokenizer")
        dst_config = os.path.join(save_directory, TOKENIZER_CONFIG)
        with open(dst_config, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return (dst_config, *written)


# transformers 5 has one T5 tokenizer class; the Fast name and AutoTokenizer.from_pretrained resolve to it.
T5TokenizerFast = T5Tokenizer


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(folder)`` for T5 tokenizer folders (the only kind CogVideoX uses)."""

    def __init__(self):
        raise OSError("AutoTokenizer is not meant to be instantiated: use AutoTokenizer.from_pretrained(path)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, *args, **kwargs) -> T5Tokenizer:
        """``T5Tokenizer.from_pretrained`` (the same arguments): the only tokenizer CogVideoX checkpoints use."""
        return T5Tokenizer.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
