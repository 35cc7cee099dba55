"""
The special tokens, and the checks that a tokenizer file belongs to a dataset or a model: the same
special ids, a vocabulary that fits the embedding, and the same file (its sha256) as the one the
dataset or model recorded. Token ids mean text only through their tokenizer, so a mismatch is refused.
"""
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
