"""prepare.py: alignment invariants, round trips, byte fallback, atomic output and bad input."""
import gzip, json, os, subprocess, sys, unicodedata

import numpy as np
import pytest
from conftest import ROOT, make_corpus, make_long_corpus, split_arrays

import prepare

VOCAB = "1024"


def run_prepare(*args, cwd=None):
    """prepare.py as a user runs it: a separate process, its exit code and its stderr."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--quiet",
                           "--vocab_size", VOCAB, *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def load(out, split="train"):
    return split_arrays(out, split)


def shard_bytes(out):
    """Every shard file's bytes, by name (the done records hold timings: compared apart)."""
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.bin"))}


def documents(ids, flags):
    """Split a stream back into documents at [CLS]; yield (token ids, unit flags) without the specials."""
    starts = np.flatnonzero(ids == prepare.CLS_ID).tolist() + [len(ids)]
    for a, b in zip(starts[:-1], starts[1:]):
        assert ids[b - 1] == prepare.SEP_ID
        yield ids[a + 1:b - 1], flags[a + 1:b - 1]


def test_outputs_and_meta(tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    for key in ["vocab_size", "train_tokens", "val_tokens", "documents", "chars_per_token",
                "cross_word_token_rate", "tokens_per_unit", "tokenizer_sha256", "format_version"]:
        assert key in meta
    assert meta["special_tokens"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for split in ["train", "val"]:
        ids, flags = load(tiny_data, split)
        assert len(ids) == len(flags) == meta[f"{split}_tokens"]
        assert ids.max() < meta["vocab_size"] and set(np.unique(flags)) <= {0, 1}
        assert ids[0] == prepare.CLS_ID and ids[-1] == prepare.SEP_ID
        specials = np.isin(ids, [prepare.CLS_ID, prepare.SEP_ID])
        assert flags[specials].all(), "special tokens are single-token units"
    n_docs = sum(1 for _ in documents(*load(tiny_data))) + sum(1 for _ in documents(*load(tiny_data, "val")))
    assert n_docs == meta["documents"] == 1500 and meta["duplicates_removed"] == 0
    assert 0 < meta["val_documents"] <= 1500 // 4
    assert 0 <= meta["cross_word_token_rate"] < 1 and meta["chars_per_token"] > 1


def test_units_cover_whole_jieba_words(tiny_data, corpus_file):
    """Every unit is a run of tokens whose characters cover whole jieba words."""
    import rjieba
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    texts = [unicodedata.normalize("NFKC", t) for t in corpus_file.read_text("utf-8").split("\n") if t]
    stream = [d for split in ["train", "val"] for d in documents(*load(tiny_data, split))]
    assert len(stream) == len(texts)
    # the split is by document: the val documents are a subset of the corpus, in order
    train_docs = list(documents(*load(tiny_data)))
    by_text = {tok.decode(ids.tolist()): flags for ids, flags in stream}
    checked = 0
    for text in texts:
        flags = by_text[text]
        enc = tok.encode(text, add_special_tokens=False)
        assert len(enc.ids) == len(flags)
        word_starts = set(np.cumsum([0] + [len(w) for w in rjieba.cut(text, True)])[:-1].tolist())
        assert flags[0] == 1, "the first token of every document begins a unit"
        unit_starts = [enc.offsets[i][0] for i in np.flatnonzero(flags)]
        assert set(unit_starts) <= word_starts, text
        # a token whose span contains a word start (other than its own) joins words: never a unit start after it
        for (s, e), f in zip(enc.offsets, flags):
            if f:
                assert s in word_starts
        checked += 1
    assert checked == 1500 and len(train_docs) > 0


def test_roundtrip_rare_characters_and_transformers(tiny_data):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    text = "ＡＢＣ１２３，全角转半角 😀🇨🇳 龘靐𠀋 emoji ok ☃ «引号»  两个空格"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert prepare.UNK_ID not in ids
    assert tok.decode(ids) == unicodedata.normalize("NFKC", text)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_data / "tokenizer.json"))
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == unicodedata.normalize("NFKC", text)
    pair = tok.encode("第一句", "第二句")
    assert pair.ids[0] == prepare.CLS_ID and pair.ids.count(prepare.SEP_ID) == 2


def test_token_spans_from_the_ids_are_the_tokenizers_offsets(tiny_data):
    """The spans token_spans derives from the ids alone (no offsets tracked) are the tokenizer's own
    offsets: byte fallback, emoji, spaces, full-width forms, a literal ▁, a piece that begins with a
    space, an empty closing piece. A tokenizer whose ids have no fixed length gets its offsets."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from support.tokens import char_lengths, token_spans
    spec = json.loads((tiny_data / "tokenizer.json").read_text())
    spec["added_tokens"] = []
    texts = [unicodedata.normalize("NFKC", t) for t in ["ＡＢＣ１２３，全角转半角 😀🇨🇳 龘靐𠀋 «引号»", "  两个  空格 ▁ 下划线",
                                                         "", "e\u0301 ok\t\n换行 [MASK]"]] + make_corpus(30)

    class NoOffsets:  # the fast path alone: asking for offsets fails
        def __init__(self, tok):
            self.encode_batch_fast = getattr(tok, "encode_batch_fast", tok.encode_batch)
    tok = Tokenizer.from_str(json.dumps(spec))
    want = token_spans(tok, None, texts)
    got = token_spans(NoOffsets(tok), char_lengths(spec), texts)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(want[0]) > 100
    assert (want[2] < want[3]).all() and (np.diff(want[2]) >= 0).all()
    spec["pre_tokenizer"]["pretokenizers"][0]["prepend_scheme"] = "always"  # a ▁ the text does not have: offsets
    tok = Tokenizer.from_str(json.dumps(spec))
    assert all(np.array_equal(a, b) for a, b in zip(token_spans(tok, char_lengths(spec), texts), token_spans(tok, None, texts)))
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "两": 1, "##个": 2}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    assert char_lengths(json.loads(wordpiece.to_str())) is None


def test_a_worker_holds_a_bounded_part_of_a_document_whatever_its_length(tmp_path, monkeypatch, tiny_data):
    """One pass over a slice holds a document's first IDENTITY_CHARS characters until its hash is
    known, then lets it flow: the peak of Python's memory does not grow with the document."""
    import tracemalloc
    monkeypatch.setattr(prepare, "READ_BYTES", 4096)
    monkeypatch.setattr(prepare, "PIECE_CHARS", 2000)
    monkeypatch.setattr(prepare, "IDENTITY_CHARS", 5000)
    monkeypatch.setattr(prepare.dataset, "READ_TOKENS", 4096)  # shards are read back in blocks of this
    prepare.init_worker((tiny_data / "tokenizer.json").read_text(), "rjieba")
    long_doc, peaks = "".join(make_corpus(2000, seed=4)), []
    for n in (1, 8):
        src, out = tmp_path / f"{n}.txt", tmp_path / f"out{n}"
        src.write_text("\n".join(make_corpus(50) + [long_doc * n] + make_corpus(50, seed=1)) + "\n", encoding="utf-8")
        (out / "shards").mkdir(parents=True)
        cfg = dict(out_dir=str(out), val_threshold=0.1, tokenizer_sha256="-", text_field=["text"], encoding="utf-8",
                   doc_format="line", keep_duplicates=False, shard_tokens=10**8, vocab_size=1024, chunk_chars=5000)
        tracemalloc.start()
        record = prepare.encode_slice((0, str(src), {"file": 0}, None, cfg))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert record["stats"]["chars"] > n * len(long_doc) and record["document_tokens"]["train"]["longest"] > n * 20000
    assert peaks[1] < 1.2 * peaks[0] and peaks[1] < 8 * len(long_doc), peaks  # the document as a str: 2 bytes a character


def test_literal_special_token_text_is_not_special(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_corpus(50)) + "\n这里写着[MASK]和[CLS]两个字符串。\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_prepare("--input", src, "--out_dir", out).returncode == 0
    ids = np.concatenate([load(out, s)[0] for s in ["train", "val"]])
    assert (ids == prepare.MASK_ID).sum() == 0
    assert (ids == prepare.CLS_ID).sum() == 51


def test_formats_jsonl_json_gzip_fields_and_tokenizer_reuse(tmp_path, tiny_data):
    docs = make_corpus(40, seed=1)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    with gzip.open(d / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"title": t[:5], "content": t}, ensure_ascii=False) + "\n" for t in docs[:20])
    (d / "sub" / "b.json").write_text(json.dumps([{"title": "标题", "content": t} for t in docs[20:]],
                                                 ensure_ascii=False), encoding="utf-8")
    (d / "ignored.md").write_text("not read\n")
    out = tmp_path / "out"
    r = run_prepare("--input", d, "--out_dir", out, "--text_field", "title,content",
                    "--tokenizer", tiny_data / "tokenizer.json")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 40 and len(meta["settings"]["sources"]) == 2
    assert (out / "tokenizer.json").read_bytes() == (tiny_data / "tokenizer.json").read_bytes()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    stored = [tok.decode(d.tolist()) for split in ["train", "val"] for d, _ in documents(*load(out, split))]
    assert unicodedata.normalize("NFKC", docs[0][:5] + "\n" + docs[0]) in stored


def test_csv_and_tsv_corpora_and_what_is_said_about_odd_inputs(tmp_path):
    """A CSV's header names the columns (--text_field); a quoted field may span lines; TSV and gzip
    too. An empty file is skipped, and a file whose name does not say its kind is read as plain
    text: both said in one line each."""
    import csv
    docs = make_corpus(60, seed=2)
    d = tmp_path / "in"
    d.mkdir()
    with open(d / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "content"])
        w.writerows([i, "标题", t.replace("。", "。\n", 1)] for i, t in enumerate(docs[:30]))  # quoted newlines
    with gzip.open(d / "b.tsv.gz", "wt", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([["title", "content"]] + [["标题", t] for t in docs[30:50]])
    (d / "empty.jsonl").write_text("")
    notes = tmp_path / "notes.md"
    notes.write_text("\n".join(docs[50:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    r = run_prepare("--input", d, notes, "--out_dir", out, "--text_field", "title,content")
    assert r.returncode == 0, r.stderr
    assert f"{d / 'empty.jsonl'}: skipped (empty)" in r.stdout
    assert f"{notes}: read as plain text, one document per line" in r.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 60 and len(meta["settings"]["sources"]) == 3
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    stored = {tok.decode(d.tolist()) for split in ["train", "val"] for d, _ in documents(*load(out, split))}
    two = next(t for t in docs[:30] if t.index("。") < len(t) - 1)  # a row whose field spans two lines
    assert unicodedata.normalize("NFKC", "标题\n" + two.replace("。", "。\n", 1)) in stored
    (d / "c.csv").write_text("title,content\n标题,一,二\n", encoding="utf-8")
    r = run_prepare("--input", d / "c.csv", "--out_dir", tmp_path / "bad", "--text_field", "title,content")
    assert r.returncode != 0 and r.stderr.strip().endswith("c.csv: line 2: 3 fields, the header has 2"), r.stderr
    r = run_prepare("--input", d / "a.csv", "--out_dir", tmp_path / "bad", "--text_field", "body")
    assert r.returncode != 0 and "a.csv: no text column 'body' in its first line" in r.stderr, r.stderr


def test_legacy_encoding(tmp_path):
    src = tmp_path / "gbk.txt"
    src.write_bytes("\n".join(make_corpus(30)).encode("gb18030"))
    assert "not valid utf-8" in run_prepare("--input", src, "--out_dir", tmp_path / "a").stderr
    assert run_prepare("--input", src, "--out_dir", tmp_path / "b", "--encoding", "gb18030").returncode == 0


def test_same_output_with_one_or_two_workers(tmp_path, corpus_file):
    lines = corpus_file.read_text("utf-8").splitlines()
    (tmp_path / "in").mkdir()
    for k in range(3):  # the workers share the input files out
        (tmp_path / "in" / f"part_{k}.txt").write_text("\n".join(lines[k::3]) + "\n", encoding="utf-8")
    for w in ["1", "2"]:
        r = run_prepare("--input", tmp_path / "in", "--out_dir", tmp_path / w, "--workers", w, "--chunk_chars", "2000")
        assert r.returncode == 0, r.stderr
    assert shard_bytes(tmp_path / "1") == shard_bytes(tmp_path / "2") and len(shard_bytes(tmp_path / "1")) == 12
    metas = [json.loads((tmp_path / w / "meta.json").read_text()) for w in ["1", "2"]]
    assert [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in metas][0] == \
        [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in metas][1]


def test_interrupted_run_leaves_no_meta(tmp_path, corpus_file, monkeypatch):
    out = tmp_path / "out"
    prepare.main(["--input", str(corpus_file), "--out_dir", str(out), "--vocab_size", VOCAB, "--quiet",
                  "--workers", "1"])
    assert (out / "meta.json").exists()

    def boom(*work):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare, "encode_chunk", boom)
    os.utime(corpus_file)  # the input changed since: its shards are encoded again (the same command re-run)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(["--input", str(corpus_file), "--out_dir", str(out), "--vocab_size", VOCAB,
                      "--quiet", "--workers", "1"])
    assert not (out / "meta.json").exists(), "an interrupted run must not leave a meta.json"
    assert not [p for p in os.listdir(out) + os.listdir(out / "shards") if p.endswith(".tmp")]


def bad_inputs(tmp):
    good = tmp / "good.txt"
    good.write_text("\n".join(make_corpus(20)), encoding="utf-8")
    (tmp / "empty").mkdir()
    (tmp / "blank.txt").write_text("\n   \n\t\n", encoding="utf-8")
    (tmp / "latin1.txt").write_bytes("第一行\n".encode() + "caf\xe9\n".encode("latin-1"))
    (tmp / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp / "bad.jsonl").write_text('{"text": "好的"}\n{"text": oops}\n', encoding="utf-8")
    (tmp / "nofield.jsonl").write_text('{"text": "好的"}\n{"body": "没有"}\n', encoding="utf-8")
    return [
        (["--input", tmp / "missing.txt"], "missing.txt: no such file"),
        (["--input", tmp / "empty"], "empty: directory has no readable files"),
        (["--input", tmp / "blank.txt"], "the corpus is empty"),
        (["--input", tmp / "latin1.txt"], "latin1.txt: line 2, byte offset 13: not valid utf-8"),
        (["--input", tmp / "binary.txt"], "binary.txt: binary data (NUL byte at byte offset 8)"),
        (["--input", tmp / "bad.jsonl"], "bad.jsonl: line 2: invalid JSON"),
        (["--input", tmp / "nofield.jsonl"], "nofield.jsonl: line 2: no text field 'text'"),
        (["--input", good, "--vocab_size", "1000"], "not a multiple of 64"),
        (["--input", good, "--vocab_size", "320"], "too small"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_bad_input(tmp_path, case):
    args, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    r = run_prepare(*args, "--out_dir", out)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message.lower() in lines[0].lower(), r.stderr
    assert not (out / "meta.json").exists()


def test_refuses_a_different_dataset_unless_overwrite(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(make_corpus(30, seed=2)), encoding="utf-8")
    b.write_text("\n".join(make_corpus(30, seed=3)), encoding="utf-8")
    out = tmp_path / "out"
    assert run_prepare("--input", a, "--out_dir", out).returncode == 0
    assert run_prepare("--input", a, "--out_dir", out).returncode == 0  # same dataset: rebuilt
    r = run_prepare("--input", b, "--out_dir", out)
    assert r.returncode != 0 and "already holds a different dataset" in r.stderr
    assert (out / "meta.json").exists(), "the refusal leaves the old dataset intact"
    assert run_prepare("--input", b, "--out_dir", out, "--overwrite").returncode == 0


def decoded_documents(out, split):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    return [tok.decode(ids.tolist()) for ids, _ in documents(*load(out, split))]


@pytest.mark.parametrize("keep", [False, True])
def test_duplicates_are_removed_and_the_split_is_disjoint(tmp_path, keep):
    docs = make_corpus(200, seed=5)
    copies = [d for i, d in enumerate(docs) for _ in range(1 + i % 3)]  # 0, 1 or 2 extra copies each
    copies[5] = "  " + copies[5] + " "  # equal after normalisation (strip) too
    src = tmp_path / "dup.txt"
    src.write_text("\n".join(copies) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    r = run_prepare("--input", src, "--out_dir", out, *(["--keep_duplicates"] if keep else []))
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents_read"] == len(copies)
    assert meta["duplicates_removed"] == (0 if keep else len(copies) - 200)
    assert meta["documents"] == (len(copies) if keep else 200)
    train_docs, val_docs = decoded_documents(out, "train"), decoded_documents(out, "val")
    assert len(train_docs) + len(val_docs) == meta["documents"] and val_docs
    assert not set(train_docs) & set(val_docs), "no validation document also occurs in train"
    assert keep or len(set(train_docs)) == len(train_docs)


def test_blank_line_documents(tmp_path, long_data):
    docs = make_long_corpus(tmp_path / "long.txt")
    meta = json.loads((long_data / "meta.json").read_text())
    assert meta["documents"] == len(docs) and meta["settings"]["doc_format"] == "blank"
    stored = decoded_documents(long_data, "train") + decoded_documents(long_data, "val")
    assert sorted(stored) == sorted(unicodedata.normalize("NFKC", d) for d in docs), "each blank-line block is one document, its lines joined by newlines"
    assert meta["document_tokens"]["val"]["longest"] > 512, "long documents reach validation too"


def test_a_long_document_is_streamed_in_pieces_and_survives_intact(tmp_path, monkeypatch, tiny_data):
    import train
    from tokenizers import Tokenizer
    long_doc = "".join(make_corpus(400, seed=9))  # ~10k characters on one line
    src = tmp_path / "c.txt"
    src.write_text("\n".join([long_doc] + make_corpus(60, seed=8)) + "\n", encoding="utf-8")  # first: train
    args = ["--input", str(src), "--vocab_size", VOCAB, "--quiet", "--workers", "1", "--tokenizer",
            str(tiny_data / "tokenizer.json"), "--val_fraction", "0.01"]
    prepare.main(args + ["--out_dir", str(tmp_path / "whole")])
    # tiny read buffers and pieces: the line arrives in parts, the document flows on in pieces
    monkeypatch.setattr(prepare, "READ_BYTES", 256)
    monkeypatch.setattr(prepare, "PIECE_CHARS", 300)
    pieces = list(prepare.normalized_documents([str(src)], ["text"], "utf-8"))
    assert max(len(p) for p, _ in pieces) <= 300 and sum(last for _, last in pieces) == 61
    prepare.main(args + ["--out_dir", str(tmp_path / "pieces")])
    assert shard_bytes(tmp_path / "whole") == shard_bytes(tmp_path / "pieces")
    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    want = tok.encode(long_doc, add_special_tokens=False).ids
    split = next(s for s in ["train", "val"] if any(len(d) == len(want) for d, _ in documents(*load(tmp_path / "pieces", s))))
    ids, flags = load(tmp_path / "pieces", split)
    found = [d for d, _ in documents(ids, flags) if len(d) == len(want)]
    assert found and found[0].tolist() == want and len(want) > 1024, "the long document, whole, in its split"
    # packed across windows: windows inside the document are single sequences; one across its end is cut there
    meta, data = train.load_data(str(tmp_path / "pieces"))
    start = int(np.flatnonzero(ids == prepare.CLS_ID)[[len(d) for d, _ in documents(ids, flags)].index(len(want))])
    _, _, cu = train.make_batch(data[split], [start + 1, start + 400], [0.15] * 2,
                                [np.random.default_rng(0)] * 2, meta, 256)
    assert cu.tolist() == [0, 256, 512]
    end = start + len(want) + 2  # the next document's [CLS]
    if end + 156 <= len(ids):
        _, _, cu = train.make_batch(data[split], [end - 100], [0.15], [np.random.default_rng(0)], meta, 256)
        assert cu.tolist()[:2] == [0, 100] and cu[-1] == 256


def test_parquet_and_jsonl_corpora_as_they_are(tmp_path, tiny_data):
    """CCI3-HQ's layout (data/part_NNNNNN.jsonl, field text) and a parquet corpus with a text column
    (read one row group at a time) give the same documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = make_corpus(60, seed=12)
    (tmp_path / "cci3" / "data").mkdir(parents=True)
    for k in range(2):
        (tmp_path / "cci3" / "data" / f"part_{k:06d}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs[k::2])), "utf-8")
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"id": list(range(60)), "text": docs[0::2] + docs[1::2]}), tmp_path / "pq" / "000.parquet",
                   row_group_size=7)
    stored = {}
    for name in ["cci3", "pq"]:
        r = run_prepare("--input", tmp_path / name, "--out_dir", tmp_path / f"out_{name}", "--tokenizer",
                        tiny_data / "tokenizer.json")
        assert r.returncode == 0, r.stderr
        stored[name] = sorted(decoded_documents(tmp_path / f"out_{name}", "train") +
                              decoded_documents(tmp_path / f"out_{name}", "val"))
    assert stored["cci3"] == stored["pq"] == sorted(unicodedata.normalize("NFKC", d) for d in docs)
    r = run_prepare("--input", tmp_path / "pq", "--out_dir", tmp_path / "bad", "--text_field", "content")
    assert r.returncode != 0 and "000.parquet: no text column 'content' (use --text_field; columns here: id, text)" in r.stderr
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    r = run_prepare("--input", tmp_path / "broken.parquet", "--out_dir", tmp_path / "bad")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "broken.parquet: not a readable parquet" in r.stderr


def test_a_format_2_dataset_is_replaced_only_with_overwrite(tmp_path, corpus_file):
    out = tmp_path / "old"
    out.mkdir()
    (out / "train.bin").write_bytes(b"\0\0")
    (out / "meta.json").write_text(json.dumps({"format_version": 2, "settings": {"sources": [str(corpus_file)]}}))
    r = run_prepare("--input", corpus_file, "--out_dir", out)
    assert r.returncode != 0 and "holds a dataset of format 2 (one train.bin per split)" in r.stderr
    assert (out / "train.bin").exists()
    assert run_prepare("--input", corpus_file, "--out_dir", out, "--overwrite").returncode == 0
    assert not (out / "train.bin").exists() and (out / "meta.json").exists()


def test_bad_input_found_by_a_worker_is_one_line_and_leaves_nothing(tmp_path):
    """A bad line that only the encode step reaches (the vocabulary's sample stops before it), in one
    of two worker processes: one line naming it, and no temporary file of either worker is left."""
    d = tmp_path / "in"
    d.mkdir()
    docs = make_corpus(3000, seed=5)
    (d / "a.txt").write_text("\n".join(docs[:2000]) + "\n", encoding="utf-8")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs[2000:])
                               + '{"text": oops}\n', encoding="utf-8")
    out = tmp_path / "out"
    r = run_prepare("--input", d, "--out_dir", out, "--workers", "2", "--bpe_chars", "1000", "--val_fraction", "0.2",
                    "--shard_tokens", "300")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "b.jsonl: line 1001: invalid JSON" in lines[0], r.stderr
    assert not (out / "meta.json").exists() and not [p for p in os.listdir(out / "shards") if p.endswith(".tmp")]
