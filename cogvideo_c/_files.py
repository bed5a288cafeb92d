"""Reading the small files of a checkpoint folder (config.json, model_index.json, tokenizer files) defensively.

A FIFO in place of a file would block `open()` until some writer came (Ctrl-C cannot interrupt it while the GIL is
released), a device may never end, and a 10 GB file named config.json would be read whole. Files are therefore
checked to be regular before they are opened, opened non-blocking, and read up to a bound; JSON that Python cannot
read (malformed, not UTF-8, nested past the recursion limit) or that is not an object is a ValueError naming the
file."""

import json
import os
import stat

# Far above any config or tokenizer file (the released CogVideoX checkpoints' T5 tokenizer.json is about 2.4 MB).
MAX_FILE_BYTES = 64 * 2**20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_mode(path, mode):
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise OSError(f"{path} is {kind}, not a regular file")


def check_regular(path):
    """Raises OSError unless `path` (following symbolic links) is a regular file; FileNotFoundError if it is absent."""
    _check_mode(path, os.stat(path).st_mode)


def read_bytes(path, limit=MAX_FILE_BYTES):
    """The contents of the regular file `path`, at most `limit` bytes (OSError beyond)."""
    check_regular(path)
    # O_NONBLOCK: a FIFO put in the file's place after the check cannot block the open either.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        _check_mode(path, info.st_mode)
        if info.st_size > limit:
            raise OSError(f"{path} is {info.st_size} bytes, more than the {limit} a checkpoint's text file can be")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} grew past {limit} bytes while being read")
    return data


def read_json(path):
    """The JSON object held by the regular file `path`."""
    data = read_bytes(path)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{path} nests JSON arrays or objects too deeply to be read") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(value).__name__}")
    return value
