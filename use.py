"""
Use a trained model: fill in masked words, embed and compare sentences, export to Hugging Face.

    python use.py                                          # a few built-in examples on out/
    python use.py "北京是{中国}的首都。" "我喜欢[MASK]书。"   # fill-mask
    python use.py --similarity "今天天气很好。" "今天天气不错。" "股市大跌。"
    python use.py --export hf_out                          # a folder for transformers and sentence-transformers
    python use.py --model_dir out --top_k 5 --device cpu ...

Two ways to mask:
    {word}   hides the word between the braces the way whole-word masking did in training: every
             token that overlaps its characters becomes [MASK]. A token that straddles the word's
             edge is hidden too, so the output shows the characters actually hidden, in [brackets].
    [MASK]   hides exactly one token at that place (the model guesses one token, which may be a
             word, a character or a piece of one).
Each hidden token gets its top-k guesses; the model predicts the tokens of a word independently.

--similarity prints each sentence's embedding (the mean of the encoder's last hidden states over
its tokens, [CLS] and [SEP] included) and the cosine similarity of every pair. A model that was
only pre-trained with masked-LM is not tuned for similarity: expect high cosines everywhere until
it is fine-tuned on sentence pairs (the paper does this contrastively).
"""
import os

import torch
import torch.nn.functional as F

from cmbert import CMBert, mean_pool
from support.errors import Refused, script
from support.fill_mask import encode, fill_mask
from support.runtime import pick_device
from support.settings import ArgParser
from support.tokens import load_tokenizer

EXAMPLES = ["北京是{中华人民共和国}的首都。", "这本书的内容非常{精彩}，推荐大家阅读。",
            "酒店的服务态度很好，{房间}也很干净。", "今天的天气很好，我们一起去[MASK]散步吧。"]


def parse_masks(sentence, where):
    """'北京是{中国}的首都' -> ('北京是中国的首都', [(3, 5)]): the text without braces and the
    character spans of the words to hide."""
    text, spans, start = "", [], None
    for ch in sentence:
        if ch == "{":
            if start is not None:
                raise Refused(f"{where}: '{{' inside a {{word}} (masks do not nest)")
            start = len(text)
        elif ch == "}":
            if start is None:
                raise Refused(f"{where}: '}}' without a '{{' before it")
            if start == len(text):
                raise Refused(f"{where}: empty {{}}: put the word to hide between the braces")
            spans.append((start, len(text)))
            start = None
        else:
            text += ch
    if start is not None:
        raise Refused(f"{where}: '{{' without a closing '}}'")
    return text, spans


def show_fill_mask(model, tok, sentence, where, top_k, device):
    text, spans = parse_masks(sentence, where)
    enc, groups, probs = fill_mask(model, tok, text, spans, device, where)
    # the sentence with each hidden region in [brackets]; a [MASK] written by the user stays as is
    shown, cut = [], 0
    for pos in sorted(groups):
        s, e = enc.offsets[pos[0]][0], enc.offsets[pos[-1]][1]
        if enc.ids[pos[0]] == model.cfg.mask_id and len(pos) == 1 and text[s:e] == "[MASK]":
            continue
        shown += [text[cut:s], "[", text[s:e], "]"]
        cut = e
    print("".join(shown) + text[cut:])
    for pos in sorted(groups):
        hidden = text[enc.offsets[pos[0]][0]:enc.offsets[pos[-1]][1]]
        best = tok.decode([int(probs[p].argmax()) for p in pos])  # decoded together: byte pieces join up
        print(f"  {hidden} -> {best}")
        for n, p in enumerate(pos, 1):
            top = probs[p].topk(top_k)
            # a lone byte-fallback piece (<0xE4>) decodes to nothing readable: show its name instead
            show = lambda t: tok.decode([t]) if tok.decode([t]).strip("\ufffd") else tok.id_to_token(t)  # noqa: E731
            guesses = "  ".join(f"{show(int(t))} {v:.1%}" for v, t in zip(top.values.tolist(), top.indices.tolist()))
            print(f"     token {n}/{len(pos)}: {guesses}")


@torch.no_grad()
def embed(model, tok, sentence, where, device):
    enc = encode(tok, sentence, model.cfg, where)
    h = model.model(torch.tensor(enc.ids, device=device)[None])  # (1, T, n_embd), one unpadded row
    return mean_pool(h.float())[0]


def similarity(model, tok, sentences, device):
    vecs = [embed(model, tok, s, f"sentence {i}", device) for i, s in enumerate(sentences, 1)]
    for i, (s, v) in enumerate(zip(sentences, vecs), 1):
        head = " ".join(f"{x:+.3f}" for x in v[:6].tolist())
        print(f"[{i}] {s}\n    embedding ({v.numel()} dims, norm {v.norm():.3f}): {head} ...")
    if len(vecs) < 2:
        return
    print("cosine similarity:")
    for i in range(len(vecs)):
        for j in range(i + 1, len(vecs)):
            print(f"  [{i + 1}] vs [{j + 1}]: {F.cosine_similarity(vecs[i], vecs[j], dim=0).item():.4f}")


def export(model, model_dir, out_dir):
    if os.path.abspath(out_dir) == os.path.abspath(model_dir):
        raise Refused(f"--export {out_dir}: that is the model folder itself; choose another folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "config.json")):
        raise Refused(f"--export {out_dir}: exists and holds files that are not a model export; choose another folder")
    model.save_hf(out_dir, os.path.join(model_dir, "tokenizer.json"))
    remote = model.cfg.norm != "layernorm"
    arg = ", trust_remote_code=True" if remote else ""
    print(f"wrote {out_dir}/ ({'cmbert code inside: load with trust_remote_code=True' if remote else 'transformers ModernBertForMaskedLM'}). "
          f"Use it with:\n"
          f"  from transformers import pipeline\n"
          f"  fill = pipeline('fill-mask', model={out_dir!r}{arg})\n"
          f"  print(fill('北京是中国的[MASK]。'))\n"
          f"or, for the sentence embeddings of --similarity:\n"
          f"  from sentence_transformers import SentenceTransformer\n"
          f"  embeddings = SentenceTransformer({out_dir!r}{arg}).encode(['今天天气很好。', '今天天气不错。'])")


@script("use.py")
def main(argv=None):
    p = ArgParser("use.py", __doc__, epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]))
    p.add_argument("sentences", nargs="*", help="sentences (default: a few built-in fill-mask examples)")
    p.add_argument("--model_dir", default="out", help="a folder written by train.py (or save_pretrained / save_hf)")
    p.add_argument("--similarity", action="store_true", help="embed the sentences and compare every pair")
    p.add_argument("--top_k", type=int, default=5, help="guesses shown per hidden token")
    p.add_argument("--export", metavar="DIR", help="write a Hugging Face transformers folder and stop")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    args = p.parse_args(argv)
    if args.top_k < 1:
        raise Refused(f"--top_k {args.top_k}: must be at least 1")
    tok_path = os.path.join(args.model_dir, "tokenizer.json")
    model = CMBert.from_pretrained(args.model_dir).eval()
    if not os.path.exists(tok_path):
        raise Refused(f"{tok_path}: no such file (train.py writes it next to the model)")
    if args.export:
        return export(model, args.model_dir, args.export)
    tok = load_tokenizer(tok_path)
    device = pick_device(args.device)
    model.to(device)
    sentences = args.sentences or ([] if args.similarity else EXAMPLES)
    if not sentences:
        raise Refused("--similarity needs sentences to compare")
    if any(not s.strip() for s in sentences):
        raise Refused(f"sentence {next(i for i, s in enumerate(sentences, 1) if not s.strip())} is empty")
    if args.similarity:
        similarity(model, tok, sentences, device)
    else:
        for i, s in enumerate(sentences, 1):
            show_fill_mask(model, tok, s, f"sentence {i} ({s})", min(args.top_k, tok.get_vocab_size() - 5), device)


if __name__ == "__main__":
    main()
