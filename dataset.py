"""
A prepared dataset on disk, as prepare.py writes it and train.py reads it:

    tokenizer.json           the BPE tokenizer the ids belong to
    train.bin, val.bin       uint16 token ids; every document is stored as [CLS] tokens [SEP]
    train.words.bin, ...     uint8 per token: 1 = the token begins a whole-word unit, 0 = it continues one
    meta.json                written last: a directory without it is incomplete and train.py refuses it

The writer puts every file under a temporary name and renames it when complete; the reader checks
every file before any training, so a missing, damaged or foreign file is one line naming it.
"""
import json, os

import numpy as np

from errors import Refused, why
from files import is_temp, new_temp, sha256, write_json

FORMAT_VERSION = 2  # 2: de-duplicated split, document_tokens and duplicate counts in meta.json
OUTPUTS = ["train.bin", "train.words.bin", "val.bin", "val.words.bin", "tokenizer.json", "meta.json"]
META_KEYS = ["format_version", "vocab_size", "tokenizer_size", "pad_id", "cls_id", "sep_id", "mask_id",
             "train_tokens", "val_tokens", "tokenizer_sha256"]


# ------------------------------------------------------------------------------------------
# Writing (prepare.py)

def check_out_dir(out, settings, overwrite):
    """prepare.py writes only into an empty directory or one that holds a dataset it made (its own
    files, with or without meta.json); anything else, e.g. a trained model's directory, is refused
    unless --overwrite. A dataset with other settings is also kept unless --overwrite. The directory
    must be writable; temporary files a killed run left there are removed."""
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(out) and not os.path.isdir(out):
        raise Refused(f"--out_dir {out}: exists and is not a directory")
    own = set(OUTPUTS) | {f".{n}.tmp" for n in OUTPUTS}  # .X.tmp: what older versions left
    foreign = sorted(f for f in os.listdir(out) if f not in own and not is_temp(f, OUTPUTS)) if os.path.isdir(out) else []
    if foreign and not overwrite:
        raise Refused(f"--out_dir {out}: holds files prepare.py did not write ({', '.join(foreign[:3])}); "
                      f"choose an empty or new directory, or pass --overwrite")
    if os.path.exists(meta_path) and not overwrite:
        try:
            with open(meta_path, encoding="utf-8") as f:
                old = json.load(f).get("settings")
        except (ValueError, AttributeError):
            old = None
        if old != settings:
            raise Refused(f"{out}: already holds a different dataset (see its meta.json); "
                          f"choose another --out_dir or pass --overwrite")
    try:
        os.makedirs(out, exist_ok=True)
        os.remove(new_temp(meta_path))  # can we write here? (before hours of work)
        for f in os.listdir(out):
            if is_temp(f, OUTPUTS):
                os.remove(os.path.join(out, f))
        if os.path.exists(meta_path):
            os.remove(meta_path)  # from here on the directory is incomplete until the new meta.json lands
    except OSError as e:
        raise Refused(f"--out_dir {out}: cannot write there ({why(e)})")


class Writer:
    """The token and flag streams of both splits and the tokenizer, under temporary names until
    finish() renames them; meta.json comes last (finish). Used as a context manager: an error or
    an interrupt removes the temporary files, and a write error (a full disk) is one line naming
    the directory."""
    def __init__(self, out, tokenizer_json):
        self.out, self.tmp, self.handles = out, {}, {}
        self.tokenizer_json = tokenizer_json

    def __enter__(self):
        try:
            for name in OUTPUTS[:5]:
                self.tmp[name] = new_temp(os.path.join(self.out, name))
            with open(self.tmp["tokenizer.json"], "w", encoding="utf-8") as f:
                f.write(self.tokenizer_json)
            self.handles = {n: open(self.tmp[n], "wb") for n in OUTPUTS[:4]}
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def write(self, split, ids, flags):
        self.handles[f"{split}.bin"].write(ids.astype("<u2").tobytes())
        self.handles[f"{split}.words.bin"].write(flags.tobytes())

    def finish(self, meta):
        """fsync and rename every file, then write meta.json (with the tokenizer's sha256) last."""
        for h in self.handles.values():
            h.flush()
            os.fsync(h.fileno())  # on disk before the names point at it (and long before meta.json)
            h.close()
        for name, tmp in self.tmp.items():
            os.replace(tmp, os.path.join(self.out, name))
        meta["tokenizer_sha256"] = sha256(os.path.join(self.out, "tokenizer.json"))
        write_json(os.path.join(self.out, "meta.json"), meta)  # last: marks the directory complete
        return meta

    def __exit__(self, kind, error, tb):
        for h in self.handles.values():
            h.close()
        for path in self.tmp.values():
            if os.path.exists(path):
                os.remove(path)
        if isinstance(error, OSError):
            raise Refused(f"{self.out}: {why(error)}") from None


# ------------------------------------------------------------------------------------------
# Reading (train.py)

def load(data_dir):
    """meta.json, the token streams and tokenizer.json of a prepare.py directory, each checked first:
    a missing, corrupt or foreign file is one line naming it, never a traceback later on.
    Returns (meta, {"train": (ids, flags), "val": (ids, flags)}), the streams memory-mapped."""
    meta_path, tok_path = os.path.join(data_dir, "meta.json"), os.path.join(data_dir, "tokenizer.json")
    if not os.path.exists(meta_path):
        raise Refused(f"{data_dir}: no meta.json (run prepare.py; a directory without it is incomplete)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, OSError) as e:
        raise Refused(f"{meta_path}: not readable JSON ({why(e)})")
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else META_KEYS
    if missing:
        raise Refused(f"{meta_path}: lacks {', '.join(missing)} (not written by prepare.py, or damaged)")
    if meta["format_version"] != FORMAT_VERSION:
        raise Refused(f"{meta_path}: format_version {meta['format_version']!r}, but this train.py reads "
                      f"{FORMAT_VERSION} (run this version's prepare.py)")
    bad = [k for k in META_KEYS[1:-1] if type(meta[k]) is not int or meta[k] < 0]
    if bad or not meta["tokenizer_size"] <= meta["vocab_size"] <= 65536:
        raise Refused(f"{meta_path}: bad value of {(bad or ['tokenizer_size/vocab_size'])[0]} (damaged?)")
    if not os.path.exists(tok_path):
        raise Refused(f"{tok_path}: missing (run prepare.py; the run copies it next to the model)")
    if sha256(tok_path) != meta["tokenizer_sha256"]:
        raise Refused(f"{tok_path}: not the tokenizer meta.json names (sha256 {sha256(tok_path)[:12]}..., meta.json: "
                      f"{str(meta['tokenizer_sha256'])[:12]}...); the token ids would mean other text. Run prepare.py again")
    data = {}
    for split in ("train", "val"):
        for name, size in ((f"{split}.bin", 2), (f"{split}.words.bin", 1)):
            path = os.path.join(data_dir, name)
            n = os.path.getsize(path) if os.path.isfile(path) else -1
            if n <= 0 or n % size:
                raise Refused(f"{path}: " + ("missing" if n < 0 else "empty" if n == 0 else
                                             f"{n} bytes, not a whole number of {size}-byte entries (truncated?)"))
        ids = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype="<u2", mode="r")
        flags = np.memmap(os.path.join(data_dir, f"{split}.words.bin"), dtype=np.uint8, mode="r")
        if len(ids) != len(flags) or len(ids) != meta[f"{split}_tokens"]:
            raise Refused(f"{data_dir}: {split}.bin / {split}.words.bin do not match meta.json")
        if ids.max() >= meta["tokenizer_size"]:
            i = int(np.argmax(ids >= meta["tokenizer_size"]))
            raise Refused(f"{data_dir}/{split}.bin: token {i} has id {ids[i]}, outside the vocabulary of {meta['tokenizer_size']}")
        if flags.max() > 1:
            raise Refused(f"{data_dir}/{split}.words.bin: entry {int(np.argmax(flags > 1))} is not 0 or 1")
        data[split] = (ids, flags)
    return meta, data
