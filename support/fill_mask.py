"""
Whole-word fill-mask: hide every token that overlaps a word, as whole-word masking does in training,
and read the model's guesses. use.py prints them for any sentence; train.py ends with demo().
"""
import torch

from .errors import Refused
from .tokens import SPECIAL_TOKENS, load_tokenizer


def encode(tok, text, cfg, where):
    enc = tok.encode(text)  # [CLS] text [SEP]
    if len(enc.ids) > cfg.max_seq_len:
        raise Refused(f"{where}: {len(enc.ids)} tokens, longer than the model's max_seq_len {cfg.max_seq_len}")
    return enc


@torch.no_grad()
def fill_mask(model, tok, text, spans, device, where="text"):
    """Whole-word fill-mask, as in training: every token overlapping a span of `text` becomes
    [MASK] (one group of positions per span), and so does every [MASK] written in the text (a group
    of its own). Returns (encoding, groups, probabilities per position over real text tokens)."""
    cfg = model.cfg
    enc = encode(tok, text, cfg, where)
    groups = []
    for a, b in spans:
        # every real token overlapping [a, b): special tokens have empty (0, 0) offsets
        pos = [i for i, (s, e) in enumerate(enc.offsets) if e > s and s < b and e > a]
        if not pos:
            raise Refused(f"{where}: {{{text[a:b]}}} covers no token (only spaces?)")
        groups.append(pos)
    groups += [[i] for i, t in enumerate(enc.ids) if t == cfg.mask_id]
    if not groups:
        raise Refused(f"{where}: nothing to fill: mark a word as {{word}} or write [MASK] (or use --similarity)")
    ids = torch.tensor(enc.ids, device=device)
    for pos in groups:
        ids[pos] = cfg.mask_id
    logits = model(ids[None])[0][0].float()
    # guesses are real text tokens: not special tokens, not ids beyond the tokenizer (padding rows of
    # a vocabulary rounded up to a multiple of 64)
    logits[:, tok.get_vocab_size():] = float("-inf")
    logits[:, [tok.token_to_id(t) for t in SPECIAL_TOKENS]] = float("-inf")
    return enc, groups, logits.softmax(-1)


def demo(model, tokenizer_file, device):
    """train.py's closing demo: in a few sentences, hide the longest jieba word as training did and
    show the top-3 guesses for each of its tokens."""
    import rjieba
    tok = load_tokenizer(tokenizer_file)
    model.eval()
    print("fill-mask demo (a whole jieba word masked; top-3 guesses for each of its tokens):")
    for text in ["北京是中华人民共和国的首都。", "这本书的内容非常精彩，推荐大家阅读。",
                 "酒店的服务态度很好，房间也很干净。", "今天的天气很好，我们一起去公园散步吧。"]:
        word = max(rjieba.cut(text, True), key=len)  # the longest word: the most interesting one to guess
        a = text.index(word)
        _, groups, probs = fill_mask(model, tok, text, [(a, a + len(word))], device)
        guesses = ["/".join(tok.decode([t]) for t in probs[p].topk(3).indices.tolist()) for p in groups[0]]
        print(f"  {text[:a]}[{word}]{text[a + len(word):]}  ->  {' + '.join(guesses)}")
    model.train()
