"""Datasets in shards: one corpus prepared by several machines, one big file cut into slices for many
workers, a killed encode resumed, training over shards bitwise equal to training over one, and a
start-up that reads the manifest, not the data."""
import gzip, json, os, random, shutil

import numpy as np
import pytest
import torch
from conftest import make_corpus, make_long_corpus, shard_names, split_arrays
from test_faults import one_line, run

from support import corpus, dataset
import prepare
from support import settings
import train

SIZES = [500, 300, 250, 150]  # documents per input file: file 0 is the largest, so it is encoded first


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """CCI3-HQ's layout: data/part_NNNNNN.jsonl with a `text` field; a duplicate inside file 0 and a copy
    of a file-1 document in file 3 (exact duplicates across files are kept, in one split)."""
    d = tmp_path_factory.mktemp("many") / "data"
    d.mkdir()
    docs, k = make_corpus(sum(SIZES), seed=21), 0
    for i, n in enumerate(SIZES):
        part = docs[k:k + n] + ([docs[k]] if i == 0 else [docs[SIZES[0]]] if i == 3 else [])
        k += n
        (d / f"part_{i:06d}.jsonl").write_text("".join(json.dumps({"text": t, "id": j}, ensure_ascii=False) + "\n"
                                                       for j, t in enumerate(part)), encoding="utf-8")
    return d


def args(inputs, out, *more):
    return ["--input", str(inputs), "--out_dir", str(out), "--vocab_size", "1024", "--quiet", "--workers", "1",
            "--shard_tokens", "500", *map(str, more)]


@pytest.fixture(scope="module")
def one_job(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "data"
    prepare.main(args(inputs, out))
    return out


def same_dataset(a, b):
    """The same shards (names, tokens, checksums, bytes) and the same manifest, timings aside."""
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("seconds")}  # noqa: E731
    assert strip(ma) == strip(mb)
    assert {p.name: p.read_bytes() for p in (a / "shards").glob("*.bin")} == \
        {p.name: p.read_bytes() for p in (b / "shards").glob("*.bin")}
    return ma


def in_both_splits(out):
    """The documents (as token ids) that are in train and in validation."""
    train_docs, val_docs = ({tuple(d) for d in np.split(ids, np.flatnonzero(ids == prepare.CLS_ID)[1:])}
                            for ids, _ in (split_arrays(out, "train"), split_arrays(out, "val")))
    return train_docs & val_docs


def test_three_ranks_and_finalize_equal_one_job(inputs, one_job, tmp_path):
    out = tmp_path / "ranks"
    prepare.main(args(inputs, out, "--step", "vocab"))
    prepare.main(args(inputs, out, "--step", "encode", "--rank", "0", "--world", "3"))
    r = run("prepare.py", *args(inputs, out, "--step", "encode"), env=dict(RANK="1", WORLD_SIZE="3"))  # torchrun's
    assert r.returncode == 0, r.stderr
    one_line(run("prepare.py", *args(inputs, out, "--step", "finalize")), "part_000002.jsonl: not encoded yet",
             "--rank 2 modulo --world")
    slurm_array = dict(SLURM_ARRAY_TASK_ID="7", SLURM_ARRAY_TASK_MIN="5", SLURM_ARRAY_TASK_COUNT="3",
                       SLURM_PROCID="0", SLURM_NTASKS="1")  # an array task is rank 2 of 3, whatever its own task count
    r = run("prepare.py", *args(inputs, out, "--step", "encode"), env=slurm_array)
    assert r.returncode == 0, r.stderr
    prepare.main(args(inputs, out, "--step", "finalize"))
    meta = same_dataset(one_job, out)
    assert len(meta["shards"]["train"]) > 8 and meta["documents_read"] == sum(SIZES) + 2
    assert meta["duplicates_removed"] == 1, "exact copies go within an input file, not across files"
    assert not in_both_splits(out), "a copy across files lands in the same split as the original"


def test_killed_encode_resumes_and_ends_the_same(inputs, one_job, tmp_path):
    out = tmp_path / "killed"
    prepare.main(args(inputs, out, "--step", "vocab"))
    r = run("prepare.py", *args(inputs, out, "--step", "encode"), kill_at="done-000000.json:after:1")
    assert r.returncode < 0, r.stderr
    done = sorted(p.name for p in (out / "shards").glob("done-*.json"))
    assert done == ["done-000000.json"] and not (out / "meta.json").exists()
    first = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*-000000-*.bin")}
    r = run("prepare.py", *[a for a in args(inputs, out, "--step", "encode") if a != "--quiet"])
    assert r.returncode == 0, r.stderr
    assert "encoded 3 of its 4 slices (1 were finished already)" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in first} == first, "finished shards are kept, not written again"
    prepare.main(args(inputs, out, "--step", "finalize"))
    same_dataset(one_job, out)
    # an input that changed since is encoded again; the others stay
    os.utime(inputs / "part_000003.jsonl")
    r = run("prepare.py", *[a for a in args(inputs, out) if a != "--quiet"])
    assert r.returncode == 0 and "encoded 1 of its 4 slices" in r.stdout, r.stdout + r.stderr
    one_line(run("prepare.py", *args(inputs, out, "--step", "encode", "--val_fraction", "0.1")),
             "plan.json: made with val_fraction=0.03, this step has 0.1: give every step the same options")


def crossing_seed(shard_ends, n, steps, B, T):
    """The first seed whose training windows (train.train_batch's starts) cross a shard boundary."""
    for seed in range(100):
        starts = [int(np.random.default_rng([seed, s, row]).integers(0, n - T)) for s in range(steps) for row in range(B)]
        if any(((a < shard_ends) & (shard_ends < a + T)).any() for a in starts):
            return seed


def test_training_over_shards_is_bitwise_training_over_one(inputs, tmp_path):
    """The same documents as four files (many shards) and as one file (one shard per split) give the
    same token streams, and a run over each gives bitwise the same model and log."""
    whole = tmp_path / "whole.jsonl"
    whole.write_text("".join(p.read_text("utf-8") for p in sorted(inputs.glob("*.jsonl"))), encoding="utf-8")
    many, one = tmp_path / "many", tmp_path / "one"
    prepare.main(args(inputs, many, "--keep_duplicates"))
    prepare.main(args(whole, one, "--keep_duplicates", "--shard_tokens", "100000000"))
    for split in ("train", "val"):
        assert all(np.array_equal(a, b) for a, b in zip(split_arrays(many, split), split_arrays(one, split)))
    assert len(shard_names(many, "train")) > 20 and len(shard_names(one, "train")) == 1
    meta, data = train.load_data(str(many))
    n, T = meta["train_tokens"], 128
    seed = crossing_seed(data["train"][0].ends[:-1], n, 3, 2, T)
    assert seed is not None, "a window that crosses a shard boundary"
    common = ["--eval_windows=2", "--lr_warmup=0.2", "--progress=False", "--demo=False", "--max_steps=3",
              f"--stages=[(0, {T}, 2, 1e4)]", "--eval_interval=3", f"--seed={seed}"]
    for d in (many, one):
        r = run("train.py", *common, f"--data_dir={d}", f"--out_dir={tmp_path / ('run_' + d.name)}")
        assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file
    wa, wb = (load_file(tmp_path / f"run_{d}" / "model.safetensors") for d in ("many", "one"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "tok_s"} for line in open(tmp_path / f"run_{d}" / "log.jsonl")]
            for d in ("many", "one")]
    assert rows[0] == rows[1] and any("val_loss" in r for r in rows[0])


def test_stream_spans_shards_and_start_up_reads_no_data(one_job, tmp_path):
    meta, data = dataset.load(str(one_job))
    ids, flags = data["train"]
    want_ids, want_flags = split_arrays(one_job)
    assert len(ids) == len(want_ids) == meta["train_tokens"] and len(ids.ends) > 8
    rng = np.random.default_rng(0)
    for a in [0, int(ids.ends[0]) - 3, int(ids.ends[3]) - 1] + rng.integers(0, len(ids) - 900, 20).tolist():
        b = a + int(rng.integers(1, 900))  # up to two shard boundaries inside
        assert np.array_equal(ids[a:b], want_ids[a:b]) and np.array_equal(flags[a:b], want_flags[a:b])
    assert ids[-1] == want_ids[-1] and ids[5] == want_ids[5] and len(ids[len(ids):]) == 0
    ids.OPEN_FILES = 3  # fewer open shards than it reads: the least recently used are closed
    assert np.array_equal(ids[0:len(ids)], want_ids) and len(ids.fds) == 3
    starts = data["val"][0].doc_starts
    val_ids, _ = split_arrays(one_job, "val")
    assert np.array_equal(starts, np.flatnonzero(val_ids == prepare.CLS_ID)), "the index of document starts"
    # shards of the right size and the wrong bytes: start-up does not read them, a read names the file
    damaged = tmp_path / "damaged"
    shutil.copytree(one_job, damaged)
    for p in (damaged / "shards").glob("*.bin"):
        p.write_bytes(b"\xff" * p.stat().st_size)
    meta, data = dataset.load(str(damaged))
    with pytest.raises(SystemExit) as e:
        data["train"][0][10:20]
    assert f"shards/{shard_names(one_job, 'train')[0]}.bin: token 10 has id 65535, outside the vocabulary" in str(e.value.code)
    last = damaged / "shards" / f"{shard_names(one_job, 'train')[-1]}.words.bin"
    last.write_bytes(last.read_bytes()[:-5])  # truncated after start-up
    with pytest.raises(SystemExit) as e:
        data["train"][1][len(ids) - 20:]
    assert f"{last}: ends before the" in str(e.value.code) and "(truncated?)" in str(e.value.code)


def test_rank_and_world_from_the_launcher():
    assert settings.launcher_rank({}) == (0, 1, None)
    assert settings.launcher_rank(dict(RANK="3", WORLD_SIZE="8", SLURM_PROCID="0", SLURM_NTASKS="1"))[:2] == (3, 8)
    assert settings.launcher_rank(dict(SLURM_ARRAY_TASK_ID="12", SLURM_ARRAY_TASK_MIN="10",
                                       SLURM_ARRAY_TASK_COUNT="4", SLURM_PROCID="0", SLURM_NTASKS="1"))[:2] == (2, 4)
    assert settings.launcher_rank(dict(SLURM_PROCID="5", SLURM_NTASKS="16"))[:2] == (5, 16)
    with pytest.raises(SystemExit):
        settings.launcher_rank(dict(RANK="x", WORLD_SIZE="2"))


def test_validation_capped_in_tokens(inputs, one_job, tmp_path):
    """--max_val_tokens keeps the validation documents of whole slices up to the cap; the rest is set
    aside, in neither split: training is exactly the uncapped dataset's."""
    out = tmp_path / "capped"
    prepare.main(args(inputs, out, "--max_val_tokens", "1"))
    full, capped = (json.loads((d / "meta.json").read_text()) for d in (one_job, out))
    assert capped["shards"]["train"] == full["shards"]["train"] and capped["unigram_counts"] == full["unigram_counts"]
    kept = {s["name"].split("-")[1] for s in capped["shards"]["val"]}
    assert len(kept) == 1 and capped["val_set_aside"]["slices"] == 3
    assert capped["val_tokens"] + capped["val_set_aside"]["tokens"] == full["val_tokens"]
    assert capped["val_documents"] + capped["val_set_aside"]["documents"] == full["val_documents"]
    meta, data = train.load_data(str(out))
    ids, _ = split_arrays(out, "val")
    assert np.array_equal(data["val"][0].doc_starts, np.flatnonzero(ids == prepare.CLS_ID))


# ------------------------------------------------------------------------------------------
# One big file: slices, the units of work

def documents_of(path, slices, doc_format="line", encoding="utf-8", fields=("text",)):
    """The documents the slices of a file give, read one after the other (64-byte reads: long lines
    arrive in parts); each slice must end on a whole document."""
    docs = []
    for span in slices:
        text = ""
        for part, last in corpus.read_documents([str(path)], list(fields), encoding, doc_format, 64, span=span):
            text += part
            if last:
                docs.append(text)
                text = ""
        assert text == "", f"{span}: ends inside a document"
    return docs


def test_the_slices_of_a_file_give_its_documents_once_wherever_it_is_cut(tmp_path):
    """Cut at any byte, a file's slices share its documents out, each read once and whole: lines longer
    than a read, CRLF, blank and whitespace-only lines, blank-line documents spanning many slices, JSON
    lines, a legacy encoding; a gzip stream, a CSV and a file with its own reader are kept whole."""
    rng, docs = random.Random(0), make_corpus(80, seed=3)
    lines = [d * rng.choice([1, 1, 1, 5]) for d in docs]  # some lines are longer than a read (64 bytes)
    cases = {"line.txt": ("line", "utf-8", "\n".join(lines[:30]) + "\n\n \t\n" + "\r\n".join(lines[30:]))}  # no final newline
    blocks = ["\n".join(lines[k:k + rng.randint(1, 5)]) for k in range(0, 80, 3)]
    cases["blank.txt"] = ("blank", "utf-8", "\n \n" + "".join(b + rng.choice(["\n\n", "\n\n\n", "\n  \t\n", "\n\u3000\n"])
                                                        for b in blocks))
    cases["doc.jsonl"] = ("line", "utf-8", "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" + "\n" * (i % 3 == 0)
                                                   for i, t in enumerate(lines)))
    cases["gb.txt"] = ("line", "gb18030", "\n".join(lines) + "\n")
    for name, (doc_format, encoding, text) in cases.items():
        path = tmp_path / name
        path.write_bytes(text.encode(encoding))
        whole = documents_of(path, [{"file": 0}], doc_format, encoding)
        assert len(whole) > 20
        for size in [1, 2, 7, 50, 333, 1000, path.stat().st_size // 3, path.stat().st_size - 1]:
            slices = corpus.plan_slices([str(path)], size, encoding)
            assert len(slices) == -(-path.stat().st_size // size) and slices[-1]["bytes"][1] is None
            assert documents_of(path, slices, doc_format, encoding) == whole, (name, size)
    for name in ["a.txt.gz", "a.csv", "a.json"]:
        with (gzip.open if name.endswith(".gz") else open)(tmp_path / name, "wt", encoding="utf-8") as f:
            f.write("text\n" + "\n".join(lines) + "\n")
    news = tmp_path / "news.txt"
    news.write_text("\n".join(lines), encoding="utf-8")
    files = [str(tmp_path / n) for n in ["a.txt.gz", "a.csv", "a.json"]] + [str(news)]
    assert corpus.plan_slices(files, 10, "utf-8", readers={str(news): prepare.peoples_daily}) == \
        [{"file": i, "size": os.path.getsize(f)} for i, f in enumerate(files)]
    assert len(corpus.plan_slices([str(news)], 1000, "utf-16")) == 1, "an encoding whose newline is not one byte"
    # a fault in a later slice names its line in the file
    bad = tmp_path / "bad.jsonl"
    bad.write_text(cases["doc.jsonl"][2] + '{"text": oops}\n', encoding="utf-8")
    n = bad.read_text("utf-8").count("\n")
    slices = corpus.plan_slices([str(bad)], 1000, "utf-8")
    with pytest.raises(SystemExit) as e:
        documents_of(bad, slices[-1:])
    assert str(e.value.code) == f"{bad}: line {n}: invalid JSON (Expecting value)"


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """One .txt, one document per line, with exact copies close together and far apart."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    docs = make_corpus(1500, seed=31)
    lines = docs[:110] + docs[100:110] + docs[110:] + docs[:5]  # the first slice holds the close copies
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def big_args(path, out, *more):
    return args(path, out, "--slice_bytes", path.stat().st_size // 7 + 1, *more)


@pytest.fixture(scope="module")
def big_job(big_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("big_one") / "data"
    prepare.main(big_args(big_file, out))
    return out


def test_one_file_on_two_and_three_workers_or_three_machines_equals_one_job(big_file, big_job, tmp_path):
    meta = json.loads((big_job / "plan.json").read_text())
    assert len(meta["slices"]) == 7 and all("bytes" in s for s in meta["slices"])
    for w in ["2", "3"]:
        prepare.main(big_args(big_file, tmp_path / w, "--workers", w))
        same_dataset(big_job, tmp_path / w)
    out = tmp_path / "ranks"
    prepare.main(big_args(big_file, out, "--step", "vocab"))
    for r in range(3):
        prepare.main(big_args(big_file, out, "--step", "encode", "--rank", r, "--world", 3))
    prepare.main(big_args(big_file, out, "--step", "finalize"))
    meta = same_dataset(big_job, out)
    assert len({s["name"].split("-")[1] for s in meta["shards"]["train"]}) == 7
    # copies within a slice are removed (the 10 close together), copies in other slices are not
    assert meta["documents_read"] == 1515 and meta["duplicates_removed"] == 10
    assert not in_both_splits(out), "a copy in another slice lands in the same split as the original"


def test_a_killed_encode_of_one_file_resumes_and_a_changed_file_is_encoded_again(big_file, big_job, tmp_path):
    out = tmp_path / "killed"
    prepare.main(big_args(big_file, out, "--step", "vocab"))
    r = run("prepare.py", *big_args(big_file, out, "--step", "encode"), kill_at="done-000002.json:after:1")
    assert r.returncode < 0, r.stderr
    assert len(list((out / "shards").glob("done-*.json"))) == 3 and not (out / "meta.json").exists()
    r = run("prepare.py", *[a for a in big_args(big_file, out) if a != "--quiet"])
    assert r.returncode == 0 and "encoded 4 of its 7 slices (3 were finished already)" in r.stdout, r.stderr
    same_dataset(big_job, out)
    os.utime(big_file)
    r = run("prepare.py", *[a for a in big_args(big_file, out) if a != "--quiet"])
    assert r.returncode == 0 and "encoded 7 of its 7 slices" in r.stdout, r.stdout + r.stderr
    same_dataset(big_job, out)


@pytest.mark.parametrize("kind", ["blank", "jsonl", "parquet"])
def test_slices_keep_every_document_in_its_place(tmp_path, kind):
    """With every copy kept, the token streams do not depend on where the file is cut: each document is
    read once and whole, in file order (blank-line documents span several slices; parquet is cut into
    runs of row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = tmp_path / f"c.{'txt' if kind == 'blank' else kind}"
    if kind == "blank":
        make_long_corpus(src, n_short=150, n_long=6, paragraphs=20)
    else:
        docs = make_corpus(400, seed=41) * 2
        if kind == "jsonl":
            src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
        else:
            pq.write_table(pa.table({"text": docs}), src, row_group_size=23)
    common = ["--doc_format", "blank"] if kind == "blank" else []
    prepare.main(args(src, tmp_path / "whole", "--keep_duplicates", *common))
    small = 3000 if kind == "parquet" else src.stat().st_size // 9
    prepare.main(args(src, tmp_path / "sliced", "--keep_duplicates", "--slice_bytes", small, *common, "--workers", "2"))
    assert len(json.loads((tmp_path / "sliced" / "plan.json").read_text())["slices"]) > 5
    for split in ("train", "val"):
        assert all(np.array_equal(a, b) for a, b in zip(split_arrays(tmp_path / "whole", split),
                                                        split_arrays(tmp_path / "sliced", split)))
