"""
The special tokens, and the checks that a tokenizer file belongs to a dataset or a model: the same
special ids, a vocabulary that fits the embedding, and the same file (its sha256) as the one the
dataset or model recorded. Token ids mean text only through their tokenizer, so a mismatch is refused.
And where each token of an encoded text lies in it (token_spans), which prepare.py aligns with words.
"""
import itertools, json, re

import numpy as np

from .errors import BadFile
from .files import sha256

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, fixed
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
N_BYTE_TOKENS = 256  # <0x00>..<0xFF>: byte fallback, so no UTF-8 input ever becomes [UNK]
HF_NAMES = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(path):
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own exception types
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:80]
        raise BadFile(f"{path}: not a readable tokenizer.json ({reason})") from None


def model_ids(cfg):
    """The special ids a model was built with (its config's)."""
    return {"[PAD]": cfg.pad_id, "[CLS]": cfg.cls_id, "[SEP]": cfg.sep_id, "[MASK]": cfg.mask_id}


def check_fits(tok, where, vocab_size, ids=None, owner="the model"):
    """The tokenizer fits `owner`: the special tokens have its ids (by default the fixed 0..4) and
    the vocabulary fits its embedding of vocab_size rows."""
    for token, want in (ids or {t: i for i, t in enumerate(SPECIAL_TOKENS)}).items():
        got = tok.token_to_id(token)
        if got != want:
            raise BadFile(f"{where} does not match {owner}: {token} has id {got}, {owner}'s config says {want}")
    if tok.get_vocab_size() > vocab_size:
        raise BadFile(f"{where} does not match {owner}: {tok.get_vocab_size()} tokens, more than {owner}'s "
                      f"vocab_size {vocab_size}")


def check_recorded(path, recorded, message):
    """The file at `path` is the one whose sha256 was recorded; else `message`, formatted with
    {got} and {want} (the first 12 hex digits of each)."""
    got = sha256(path)
    if recorded is not None and got != recorded:
        raise BadFile(message.format(got=got[:12], want=str(recorded)[:12]))
    return got


def char_lengths(spec):
    """The characters each token id covers, where that is a property of the id, as for the tokenizers
    prepare.py trains: a BPE model whose tokens are pieces of the text as it is (our text is
    NFKC already, so the tokenizer's NFKC changes nothing; a space is one ▁), and whose byte tokens
    <0xXX> spell one character in UTF-8 (its first byte covers it, the others nothing). Else None,
    and the tokenizer's offsets are used."""
    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {"type": "NFKC"}
    if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or normalizer.get("type") != "NFKC" or "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        return None
    lengths = np.zeros(max(model["vocab"].values()) + 1, np.int64)
    for token, i in model["vocab"].items():
        byte = model.get("byte_fallback") and re.fullmatch(r"<0x([0-9A-F]{2})>", token)
        lengths[i] = int(byte.group(1), 16) & 0xC0 != 0x80 if byte else len(token)
    return lengths


def token_spans(tok, lengths, texts):
    """A chunk of texts encoded: the token ids, tokens per text, and each token's span [s, e) of
    characters in the texts laid end to end (the tokens of a byte-fallback character all share its
    span). Where char_lengths knows the ids' `lengths`, the spans follow from the ids, if they tile
    every text exactly (then the tokenizer need not track offsets, a third of its time); else they
    are the tokenizer's offsets. Both give the same spans."""
    def flat(encs):
        n_tok = np.fromiter(map(len, encs), np.int64, len(encs))
        return np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), np.int64, int(n_tok.sum())), n_tok
    doc_chars = np.fromiter(map(len, texts), np.int64, len(texts))
    if lengths is not None:
        encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch  # _fast: tokenizers >= 0.21
        ids, n_tok = flat(encode(texts, add_special_tokens=False))
        n = lengths[ids]
        e = np.cumsum(n)
        if np.array_equal(np.diff(np.concatenate(([0], e))[np.cumsum(n_tok)], prepend=0), doc_chars):
            return ids, n_tok, e - n - (n == 0), e
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids, n_tok = flat(encs)
    offsets = itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encs))
    off = np.fromiter(offsets, np.int64, 2 * len(ids)).reshape(-1, 2)
    off += np.repeat(np.cumsum(doc_chars) - doc_chars, n_tok)[:, None]
    return ids, n_tok, off[:, 0], off[:, 1]
