"""Faults, corrupt state, bad settings and untrusted files: nothing lost, nothing trusted wrongly,
one clear line. Kills are injected at the dangerous moments by a wrapper that replaces os.replace
with one that SIGKILLs the process just before or just after renaming onto a chosen file name."""
import glob, hashlib, json, os, resource, shutil, signal, subprocess, sys

import numpy as np
import pytest
import torch
from conftest import ROOT, make_corpus, shard_names

import prepare
from support import run_files
import train

TRAIN = ["--stages=[(0, 64, 2, 1e4)]", "--eval_windows=2", "--lr_warmup=0.2",
         "--progress=False", "--demo=False", "--eval_interval=3", "--ckpt_interval=2"]

KILLER = """
import os, runpy, signal, sys
name, when, nth = os.environ["KILL_AT"].split(":")   # e.g. ckpt.pt:after:2
seen, real = [0], os.replace
def replace(src, dst, *args, **kwargs):
    hit = os.path.basename(dst) == name
    seen[0] += hit
    if hit and seen[0] == int(nth) and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    if hit and seen[0] == int(nth) and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(script, *args, kill_at=None, fsize=None, env=None):
    """Run train.py or prepare.py as a user does; kill_at='file:before|after:n' kills it at the n-th
    rename onto that file; fsize limits the size of any file it writes (a full disk, as EFBIG); env adds
    environment variables (a launcher's)."""
    cmd = [sys.executable] + (["-c", KILLER] if kill_at else []) + [os.path.join(ROOT, script), *map(str, args)]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, preexec_fn=limit,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": kill_at or "", **(env or {})})


def one_line(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-2000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def refused(fn, *needles):
    """An in-process refusal: SystemExit carrying one line (what `python script.py` prints)."""
    with pytest.raises(SystemExit) as e:
        fn()
    msg = str(e.value.code)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def weights(path):
    from safetensors.torch import load_file
    return load_file(path)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temps(d):
    return glob.glob(os.path.join(d, ".*.tmp")) + glob.glob(os.path.join(d, "shards", ".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """An uninterrupted 6-step run (checkpoints at 2, 4, 6): what every interrupted run must reach."""
    out = tmp_path_factory.mktemp("faults") / "ref"
    r = run("train.py", *TRAIN, f"--data_dir={tiny_data}", "--max_steps=6", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    return out


def log_rows(out):
    return [{k: v for k, v in json.loads(l).items() if k != "tok_s"} for l in open(out / "log.jsonl")]


# ------------------------------------------------------------------------------------------
# 1. Kills at the dangerous moments

def model_dir_is_whole(out):
    """What a later step reads is whole and of one step: the model directory loads, its tokenizer is
    the one config.json names, and nothing half-written is left."""
    from cmbert import CMBert
    CMBert.from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["tokenizer_sha256"] == sha(out / "tokenizer.json")
    return weights(out / "model.safetensors")


def test_kills_during_checkpoint_and_log_rewrite_then_resume(tmp_path, tiny_data, reference):
    out, victim = tmp_path / "run", tmp_path / "victim"
    args = [*TRAIN, f"--data_dir={tiny_data}", "--max_steps=6", f"--out_dir={out}"]
    out.mkdir()
    victim.write_text("keep")
    for name in ["ckpt.pt.tmp", "model.safetensors.tmp", "config.json.tmp", "train.png.tmp.png"]:
        os.symlink(victim, out / name)  # links at the temporary names older versions used are not followed
    # killed between the model files and ckpt.pt of step 4: the model directory is step 4's, whole,
    # one checkpoint newer than ckpt.pt (never older: nothing scores stale weights)
    r = run("train.py", *args, kill_at="model.safetensors:after:2")
    assert r.returncode == -signal.SIGKILL, r.stderr
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 2 and not same_weights(model_dir_is_whole(out), ckpt["model"]) and not temps(out)
    # the resume first rewrites the model files from ckpt.pt; killed right after its ckpt.pt of step 4
    # (the moment of the issue): every file is step 4's
    r = run("train.py", *args, "--resume=True", kill_at="ckpt.pt:after:1")
    assert r.returncode == -signal.SIGKILL, r.stderr
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4 and same_weights(model_dir_is_whole(out), ckpt["model"]) and not temps(out)
    # killed during the next resume's log rewrite (which drops a row logged after the checkpoint, as
    # a run killed later than this one leaves; a log that ends at the checkpoint is not rewritten):
    # the old log stays whole
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    before = (out / "log.jsonl").read_bytes()
    r = run("train.py", *args, "--resume=True", kill_at="log.jsonl:before:1")
    assert r.returncode == -signal.SIGKILL and (out / "log.jsonl").read_bytes() == before
    assert temps(out), "the kill left the rewrite's temporary file"
    # and the run still ends bitwise where the uninterrupted one did, with its log
    r = run("train.py", *args, "--resume=True")
    assert r.returncode == 0, r.stderr
    assert same_weights(weights(out / "model.safetensors"), weights(reference / "model.safetensors"))
    assert log_rows(out) == log_rows(reference)
    assert not temps(out), "a resumed run removes what a killed one left"
    assert victim.read_text() == "keep"


def test_resume_repairs_stale_model_files_and_writes_where_told(tmp_path, tiny_data, reference, monkeypatch):
    """A checkpoint copied elsewhere resumes into the directory given now, never into the one it
    came from; a resume with nothing left to train still writes the model files it announces."""
    new = tmp_path / "copy"
    new.mkdir()
    shutil.copy(reference / "ckpt.pt", new / "ckpt.pt")
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(reference / "*"))}
    # not silently on the default data directory either (data/default here: the same dataset under
    # another name, so that the test does not depend on what the repository's data/ holds)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    os.symlink(tiny_data, tmp_path / "data" / "default")
    refused(lambda: train.main([f"--out_dir={new}", "--resume=True"]), f"trained on --data_dir={tiny_data}")
    train.main([f"--data_dir={tiny_data}", f"--out_dir={new}", "--resume=True", "--progress=False", "--demo=False"])
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(reference / "*"))} == before
    assert same_weights(weights(new / "model.safetensors"), weights(reference / "model.safetensors"))
    assert (new / "tokenizer.json").read_bytes() == (tiny_data / "tokenizer.json").read_bytes()


def test_torn_last_log_line_does_not_block_resume(tmp_path, tiny_data, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a full disk mid-append
    run_files.rewrite_log(str(out / "log.jsonl"), 6)
    assert log_rows(out) == log_rows(reference)
    lines = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text("\n".join(lines[:2] + ["garbage"] + lines[2:]) + "\n")
    refused(lambda: run_files.rewrite_log(str(out / "log.jsonl"), 6), "log.jsonl: line 3")


def test_kill_during_prepare_renames(tmp_path, corpus_file):
    out, victim = tmp_path / "data", tmp_path / "victim"
    args = ["--input", corpus_file, "--out_dir", out, "--vocab_size", "1024", "--quiet", "--workers", "1"]
    out.mkdir()
    victim.write_text("keep")
    for name in [".train.bin.tmp", ".tokenizer.json.tmp", ".meta.json.tmp"]:
        os.symlink(victim, out / name)  # links at the temporary names older versions used are not followed
    r = run("prepare.py", *args, kill_at="val-000000-0000.bin:after:1")
    assert r.returncode == -signal.SIGKILL
    assert (out / "shards" / "train-000000-0000.bin").exists() and not (out / "meta.json").exists()
    assert not (out / "shards" / "done-000000.json").exists() and temps(out), "killed with the flags file unrenamed"
    refused(lambda: train.load_data(str(out)), "no meta.json")  # an incomplete directory is never trusted
    r = run("prepare.py", *args)  # its own partial output: resumed without --overwrite
    assert r.returncode == 0, r.stderr
    assert (out / "meta.json").exists() and not temps(out) and victim.read_text() == "keep"
    train.load_data(str(out))


def test_atomic_path(tmp_path):
    from support.files import atomic_path, write_json
    target, victim = tmp_path / "x.json", tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "x.json.tmp")
    write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and victim.read_text() == "keep"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target)) as tmp:
            open(tmp, "w").write("half")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1} and not temps(tmp_path)


# ------------------------------------------------------------------------------------------
# 2. Untrusted checkpoints

class Payload:
    """Unpickling this runs code: open(marker, 'w')."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_crafted_checkpoint_runs_no_code(tmp_path, tiny_data):
    out, marker = tmp_path / "out", tmp_path / "pwned"
    out.mkdir()
    torch.save({"format_version": run_files.CKPT_FORMAT, "step": Payload(str(marker))}, out / "ckpt.pt")
    refused(lambda: train.main([f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True"]),
            "ckpt.pt: not a checkpoint this train.py can read")
    assert not marker.exists()
    torch.load(out / "ckpt.pt", weights_only=False)  # the payload is real: unpickling it runs code
    assert marker.exists()


def ckpt_cases(ref, other_data, same_tokenizer_data):
    good = (ref / "ckpt.pt").read_bytes()

    def edit(**changes):
        def f(path):
            ckpt = torch.load(ref / "ckpt.pt", weights_only=True)
            for k, v in changes.items():
                if v is None:
                    ckpt.pop(k)
                elif k == "config":
                    ckpt["config"] = {**ckpt["config"], **v}
                else:
                    ckpt[k] = v
            torch.save(ckpt, path)
        return f
    return [  # (case, writes ckpt.pt, extra arguments, expected message)
        ("empty", lambda p: p.write_bytes(b""), [], "ckpt.pt is empty"),
        ("truncated", lambda p: p.write_bytes(good[:len(good) // 2]), [], "not a checkpoint this train.py can read"),
        ("random", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), [], "not a checkpoint"),
        ("older train.py", edit(format_version=None), [], "checkpoint format None, written by another version"),
        ("newer train.py", edit(format_version=99), [], "checkpoint format 99"),
        ("unknown setting", edit(config={"stage3_start": 0.5}), [], "it has unknown settings"),
        ("bad saved setting", edit(config={"grad_accum": 0}), [], "ckpt.pt: setting grad_accum=0: must be >= 1"),
        ("damaged weights", edit(model={"nope": torch.zeros(1)}), [], "damaged checkpoint"),
        ("another preset", lambda p: p.write_bytes(good), ["--preset=base"], "a checkpoint of another model (n_layer=4"),
        ("another norm", lambda p: p.write_bytes(good), ["--norm=layernorm"], "another model (norm='rmsnorm'"),
        ("another dataset", lambda p: p.write_bytes(good), [f"--data_dir={other_data}"], "trained with another tokenizer"),
        ("another shard list, same tokenizer", lambda p: p.write_bytes(good), [f"--data_dir={same_tokenizer_data}"],
         "trained on another dataset (its fingerprint"),
        ("no dataset fingerprint", edit(dataset_fingerprint=None), [], "lacks dataset_fingerprint"),
    ]


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Another dataset with the same vocabulary size: only its tokenizer's fingerprint tells them apart."""
    src = tmp_path_factory.mktemp("other") / "c.txt"
    src.write_text("\n".join(make_corpus(300, seed=7)), encoding="utf-8")
    out = src.parent / "data"
    prepare.main(["--input", str(src), "--out_dir", str(out), "--vocab_size", "1024", "--quiet", "--workers", "1"])
    return out


@pytest.fixture(scope="module")
def same_tokenizer_data(tmp_path_factory, tiny_data):
    """Other shards with the tiny dataset's very tokenizer: only the dataset fingerprint tells them apart."""
    src = tmp_path_factory.mktemp("same_tok") / "c.txt"
    src.write_text("\n".join(make_corpus(300, seed=11)), encoding="utf-8")
    out = src.parent / "data"
    prepare.main(["--input", str(src), "--out_dir", str(out), "--vocab_size", "1024", "--quiet", "--workers", "1",
                  "--tokenizer", str(tiny_data / "tokenizer.json")])
    return out


@pytest.mark.parametrize("case", range(13))
def test_corrupt_or_foreign_checkpoint(tmp_path, tiny_data, reference, other_data, same_tokenizer_data, case):
    name, write, extra, message = ckpt_cases(reference, other_data, same_tokenizer_data)[case]
    out = tmp_path / "out"
    out.mkdir()
    write(out / "ckpt.pt")
    before = (out / "ckpt.pt").read_bytes()
    refused(lambda: train.main([f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True", "--max_steps=8",
                                *extra]), message)
    assert (out / "ckpt.pt").read_bytes() == before and sorted(os.listdir(out)) == ["ckpt.pt"], name


# ------------------------------------------------------------------------------------------
# 3. Corrupt data directories, mismatched tokenizers, unusable output directories

def data_cases(src, other):
    def bin_(name, data):
        return lambda d: (d / name).write_bytes(data)

    def meta(f):
        def g(d):
            m = json.loads((d / "meta.json").read_text())
            (d / "meta.json").write_text(json.dumps(f(m)))
        return g
    train0, val0 = (f"shards/{shard_names(src, split)[0]}" for split in ("train", "val"))
    ids = np.fromfile(src / f"{train0}.bin", "<u2")
    high = np.fromfile(src / f"{val0}.bin", "<u2")
    high[5] = 1500
    return [
        ("train shard empty", bin_(f"{train0}.bin", b""), f"{train0}.bin: empty"),
        ("train shard odd size", bin_(f"{train0}.bin", ids.tobytes()[:-1]), "not a whole number of 2-byte entries"),
        ("train shard missing", lambda d: os.remove(d / f"{train0}.bin"), f"{train0}.bin: missing"),
        # found when read: start-up checks sizes and the manifest, not every byte (validation reads it at the end)
        ("ids outside the vocabulary", bin_(f"{val0}.bin", high.tobytes()),
         f"{val0}.bin: token 5 has id 1500, outside the vocabulary"),
        ("train shard shorter", bin_(f"{train0}.bin", ids[:-2].tobytes()), f"{train0}.bin: {2 * len(ids) - 4} bytes, but meta.json records"),
        ("another dataset's shard", lambda d: shutil.copy(other / f"{train0}.bin", d / f"{train0}.bin"),
         f"{train0}.bin: ", "another dataset's shard"),
        ("word flags not 0/1", bin_(f"{val0}.words.bin", b"\x07" * os.path.getsize(src / f"{val0}.words.bin")),
         f"{val0}.words.bin: entry 0 is not 0 or 1"),
        ("meta.json invalid", bin_("meta.json", b"{not json"), "meta.json: not readable JSON"),
        ("meta.json not an object", bin_("meta.json", b"[1, 2]"), "meta.json: lacks format_version"),
        ("meta.json missing key", meta(lambda m: {k: v for k, v in m.items() if k != "mask_id"}), "lacks mask_id"),
        ("meta.json bad value", meta(lambda m: {**m, "vocab_size": "big"}), "bad value of vocab_size"),
        ("unknown format_version", meta(lambda m: {**m, "format_version": 99}), "format_version 99, but this train.py reads"),
        ("a format-2 dataset", meta(lambda m: {**m, "format_version": 2}), "format 2 (one train.bin per split)",
         "prepare the corpus again"),
        ("a shard dropped from the list", meta(lambda m: {**m, "shards": {**m["shards"], "val": m["shards"]["val"][1:]}}),
         "meta.json: its fingerprint does not match its shard list"),
        ("tokenizer.json corrupt", bin_("tokenizer.json", b"{\"truncated"), "not the tokenizer meta.json names"),
        ("tokenizer.json missing", lambda d: os.remove(d / "tokenizer.json"), "tokenizer.json: missing"),
        ("another dataset's tokenizer", lambda d: shutil.copy(other / "tokenizer.json", d / "tokenizer.json"),
         "not the tokenizer meta.json names"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_corrupt_data_directory(tmp_path, tiny_data, other_data, case):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    name, damage, *messages = data_cases(tiny_data, other_data)[case]
    damage(data)
    refused(lambda: train.main([f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", "--max_steps=1",
                                "--progress=False", "--demo=False"]), *messages)


def test_finalize_names_a_truncated_or_foreign_shard(tmp_path, tiny_data, other_data):
    """The finalize step reads every shard in full: a truncated one, one of the right size with other
    bytes, or a done record of another tokenizer is one line naming the file."""
    train0 = f"shards/{shard_names(tiny_data, 'train')[0]}"
    args = ["--input", json.loads((tiny_data / "meta.json").read_text())["settings"]["sources"][0], "--vocab_size",
            "1024", "--quiet", "--workers", "1", "--step", "finalize"]
    cases = [(lambda d: (d / f"{train0}.bin").write_bytes((tiny_data / f"{train0}.bin").read_bytes()[:-2]),
              [f"{train0}.bin: ", "bytes, but its done record records", "truncated"]),
             (lambda d: (d / f"{train0}.words.bin").write_bytes(bytes(os.path.getsize(tiny_data / f"{train0}.words.bin"))),
              [f"{train0}.bin (with its .words.bin): sha256 ", "damaged, or another dataset's shard"]),
             (lambda d: shutil.copy(other_data / "shards" / "done-000000.json", d / "shards" / "done-000000.json"),
              ["done-000000.json: ", "not of slice 0"])]
    for k, (damage, needles) in enumerate(cases):
        data = tmp_path / str(k)
        shutil.copytree(tiny_data, data)
        damage(data)
        one_line(run("prepare.py", *args, "--out_dir", data), *needles)
        assert not (data / "meta.json").exists()


def test_unusable_output_directory(tmp_path, tiny_data, reference):
    (tmp_path / "file").write_text("x")
    for out, message in [(tiny_data, "is the data directory"), (tmp_path / "file" / "sub", "cannot write there"),
                         (reference, "ckpt.pt exists: continue that run with --resume=True")]:
        refused(lambda: train.main([f"--data_dir={tiny_data}", f"--out_dir={out}", "--max_steps=1"]), message)
    other = tmp_path / "other_dataset"
    shutil.copytree(tiny_data, other)
    refused(lambda: train.main([f"--data_dir={tiny_data}", f"--out_dir={other}"]), "holds a dataset (meta.json)")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_full_disk_during_a_run_keeps_the_last_checkpoint(tmp_path, tiny_data, reference, dtype):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "ckpt.pt").read_bytes()
    limit = (os.path.getsize(out / "model.safetensors") + len(before)) // 2  # the model fits, ckpt.pt does not
    r = run("train.py", *TRAIN, f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True", "--max_steps=8",
            f"--dtype={dtype}", fsize=limit)
    one_line(r, f"{out}: cannot write the checkpoint of step 8 (File too large)", "still holds the previous one")
    assert (out / "ckpt.pt").read_bytes() == before and not temps(out)
    r = run("prepare.py", "--input", tmp_path / "missing.txt", "--out_dir", tmp_path / "d")  # sanity: one line
    one_line(r, "no such file")


def test_a_resume_writes_only_what_it_must(tmp_path, tiny_data, reference):
    """ckpt.pt records the sha256 of the model files written with it: a resume rewrites only those
    that differ, so a finished run resumes on a full disk (every write fails) and writes nothing."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    files = sorted(os.listdir(out))
    state = lambda: {name: (os.stat(out / name).st_mtime_ns, (out / name).read_bytes()) for name in files}  # noqa: E731
    before = state()
    r = run("train.py", *TRAIN, f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True", "--max_steps=6", fsize=1)
    assert r.returncode == 0 and "done: 6 steps" in r.stdout and "rewrote" not in r.stdout, r.stderr
    assert state() == before and sorted(os.listdir(out)) == files
    # a missing tokenizer.json is the only file rewritten: the weights (10 MB) would not fit on this disk
    os.remove(out / "tokenizer.json")
    r = run("train.py", *TRAIN, f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True", "--max_steps=6",
            fsize=os.path.getsize(tiny_data / "tokenizer.json"))
    assert r.returncode == 0 and "resume: rewrote tokenizer.json from ckpt.pt of step 6" in r.stdout, r.stderr
    assert state() == {**before, "tokenizer.json": state()["tokenizer.json"]}
    assert (out / "tokenizer.json").read_bytes() == before["tokenizer.json"][1]


def test_full_disk_when_a_resume_repairs_the_model_files(tmp_path, tiny_data, reference):
    """Model files that are not those of ckpt.pt (here config.json, edited) are rewritten from it; a
    disk too full for model.safetensors is one line naming it, and the files stay as they were."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "n_layer": 7}))
    before = {name: (out / name).read_bytes() for name in ("ckpt.pt", "model.safetensors", "config.json")}
    r = run("train.py", *TRAIN, f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True", "--max_steps=8",
            fsize=os.path.getsize(out / "model.safetensors") // 2)
    one_line(r, "train.py: error: ", "model.safetensors: File too large")
    assert {name: (out / name).read_bytes() for name in before} == before and not temps(out)
    r = run("train.py", *TRAIN, f"--data_dir={tiny_data}", f"--out_dir={out}", "--resume=True", "--max_steps=6")
    assert r.returncode == 0 and "resume: rewrote model.safetensors, config.json from ckpt.pt of step 6" in r.stdout
    assert json.loads((out / "config.json").read_text()) == config
    assert (out / "model.safetensors").read_bytes() == before["model.safetensors"]


@pytest.mark.parametrize("fsize,victim", [(20_000, "tokenizer.json"), (40_000, "shards/train-000000-0000.bin")])
def test_prepare_full_disk(tmp_path, corpus_file, tiny_data, fsize, victim):
    out = tmp_path / "data"
    lines = corpus_file.read_text("utf-8").splitlines()
    (tmp_path / "big.txt").write_text("\n".join(lines + [f"{t}第{i}遍。" for i, t in enumerate(lines)]), encoding="utf-8")
    r = run("prepare.py", "--input", tmp_path / "big.txt", "--out_dir", out, "--vocab_size", "1024", "--quiet",
            "--workers", "1", "--tokenizer", tiny_data / "tokenizer.json",  # 35 kB
            fsize=fsize)  # the disk fills while writing the outputs: the vocabulary, or a shard
    one_line(r, f"{out}/{victim}: File too large")
    assert not (out / "meta.json").exists() and not temps(out)


# ------------------------------------------------------------------------------------------
# 4. Bad settings: refused before any work, with the allowed range

TRAIN_SETTINGS = [
    ("--max_steps=0", "max_steps=0: must be >= 1"), ("--max_steps=-3", "max_steps=-3: must be >= 1"),
    ("--grad_accum=0", "grad_accum=0: must be >= 1"),
    ("--stages=[(0,64,0,1e4)]", "stages=[(0, 64, 0, 10000.0)]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--stages=[(0,1,2,1e4)]", "stages=[(0, 1, 2, 10000.0)]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--stages=[(0,64,2,1e4),(1.5,128,1,1e4)]", "stages=[(0, 64, 2, 10000.0), (1.5, 128, 1, 10000.0)]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--stages=[(0.1,64,2,1e4)]", "stages=[(0.1, 64, 2, 10000.0)]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--stages=[(0,64,2,1e4),(0.5,128,1,0)]", "stages=[(0, 64, 2, 10000.0), (0.5, 128, 1, 0)]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--stages=[(0,64)]", "stages=[(0, 64)]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--stages=[]", "stages=[]: must be a list of (start, seq_len, batch_size, rope_theta) records"),
    ("--eval_interval=0", "eval_interval=0: must be >= 1"), ("--ckpt_interval=0", "ckpt_interval=0: must be >= 1"),
    ("--eval_windows=0", "eval_windows=0: must be >= 1"), ("--max_bad_steps=0", "max_bad_steps=0: must be >= 1"),
    ("--mask_min=0.3 --mask_max=0.2", "mask_max=0.2: must be in [mask_min, 1]"),
    ("--mask_max=1.5", "mask_max=1.5: must be in [mask_min, 1]"), ("--mask_min=0", "mask_min=0.0: must be in (0, 1]"),
    ("--mask_warmup=2", "mask_warmup=2.0: must be in [0, 1]"),
    ("--preset=huge", "preset='huge': must be one of tiny, base, large"),
    ("--norm=batchnorm", "norm='batchnorm': must be rmsnorm or layernorm"),
    ("--dtype=float16", "dtype='float16': must be auto, float32 or bfloat16"),
    ("--device=tpu", "device='tpu': must be auto, cpu, cuda, cuda:N or mps"),
    ("--beta2=1.5", "beta2=1.5: must be in [0, 1)"), ("--beta1=-0.1", "beta1=-0.1: must be in [0, 1)"),
    ("--lr_max=0", "lr_max=0.0: must be > 0"), ("--lr_max=1e400", "lr_max=inf: must be > 0"),
    ("--lr_min=0.1 --lr_max=0.01", "lr_min=0.1: must be in [0, lr_max]"),
    ("--lr_warmup=-1", "lr_warmup=-1.0: must be in [0, 1]"), ("--lr_cycles=0", "lr_cycles=0: must be >= 1"),
    ("--lr_damping=2", "lr_damping=2.0: must be in [0, 1]"), ("--weight_decay=-1", "weight_decay=-1.0: must be >= 0"),
    ("--grad_clip=-1", "grad_clip=-1.0: must be >= 0"),
    ("--seed=-1", "seed=-1: must be in [0, 2^63)"), ("--out_dir=", "out_dir='': must be a directory"),
]
if not torch.cuda.is_available():
    TRAIN_SETTINGS.append(("--device=cuda", "device='cuda': must be a CUDA device this machine has"))
    TRAIN_SETTINGS.append(("--attn_backend=flash", "attn_backend='flash': must be auto or torch here"))


@pytest.mark.parametrize("args,message", TRAIN_SETTINGS, ids=[a for a, _ in TRAIN_SETTINGS])
def test_bad_train_setting(tmp_path, tiny_data, args, message):
    out = tmp_path / "out"
    argv = [f"--data_dir={tiny_data}", *([f"--out_dir={out}"] if "out_dir" not in args else []), *args.split()]
    refused(lambda: train.main(argv), "setting " + message)
    assert not out.exists(), "refused before any work"


def test_flex_is_refused_where_this_torch_cannot_train_with_it(tmp_path, tiny_data):
    from support.runtime import flex_trains_on  # probed here, not when the tests are collected
    if flex_trains_on("cpu"):
        pytest.skip(f"torch {torch.__version__} trains with FlexAttention on a CPU")
    out = tmp_path / "out"
    refused(lambda: train.main([f"--data_dir={tiny_data}", f"--out_dir={out}", "--attn_backend=flex", "--device=cpu"]),
            "setting attn_backend='flex': must be auto or torch here (flex: this torch's FlexAttention has no backward "
            "pass on this device)")
    assert not out.exists()


def test_bad_setting_is_one_line_from_the_command_line(tmp_path):
    one_line(run("train.py", "--grad_accum=0", f"--out_dir={tmp_path}"), "train.py: error: setting grad_accum=0")
    one_line(run("prepare.py", "--bpe_fraction", "0", "--out_dir", tmp_path), "prepare.py: error: --bpe_fraction 0.0")


def prepare_settings(tmp):
    (tmp / "bad_tok.json").write_text('{"version": "1.0", "model": ')
    return [
        (["--bpe_fraction", "0"], "--bpe_fraction 0.0: must be in (0, 1]"),
        (["--bpe_fraction", "1.5"], "--bpe_fraction 1.5: must be in (0, 1]"),
        (["--val_fraction", "-0.1"], "--val_fraction -0.1: must be in [0, 0.25]"),
        (["--val_fraction", "0.5"], "--val_fraction 0.5: must be in [0, 0.25]"),
        (["--workers", "0"], "--workers 0: must be >= 1"),
        (["--chunk_chars", "0"], "--chunk_chars 0: must be >= 1"),
        (["--vocab_size", "1000"], "not a multiple of 64"),
        (["--vocab_size", "70016"], "does not fit in uint16"),
        (["--encoding", "klingon"], "--encoding 'klingon': not an encoding"),
        (["--text_field", " , "], "--text_field ' , ': name at least one field"),
        (["--tokenizer", tmp / "bad_tok.json"], "bad_tok.json: not a readable tokenizer.json"),
        (["--tokenizer", tmp / "none.json"], "none.json: not a readable tokenizer.json"),
        (["--bpe_chars", "0"], "--bpe_chars 0: must be >= 1"),
        (["--max_val_tokens", "0"], "--max_val_tokens 0: must be >= 1"),
        (["--shard_tokens", "0"], "--shard_tokens 0: must be >= 1"),
        (["--slice_bytes", "0"], "--slice_bytes 0: must be >= 1"),
        (["--world", "0", "--step", "encode"], "--world 0: must be >= 1"),
        (["--rank", "2", "--world", "2", "--step", "encode"], "--rank 2: must be in [0, --world)"),
        (["--world", "3"], "--world 3 (given, or from RANK/WORLD_SIZE or Slurm): several machines run the steps one by one"),
        (["--step", "encode"], "no plan.json: run prepare.py --step vocab first"),
        (["--step", "finalize"], "no plan.json: run prepare.py --step vocab first"),
    ]


@pytest.mark.parametrize("case", range(21))
def test_bad_prepare_setting(tmp_path, corpus_file, case):
    args, message = prepare_settings(tmp_path)[case]
    out = tmp_path / "out"
    refused(lambda: prepare.main(["--input", str(corpus_file), "--out_dir", str(out), "--quiet",
                                  "--vocab_size", "1024", *map(str, args)]), message)
    assert not out.exists(), "refused before any work"


def test_prepare_refuses_a_directory_it_did_not_write(tmp_path, corpus_file, reference):
    model_dir = tmp_path / "model"
    shutil.copytree(reference, model_dir)
    before = (model_dir / "tokenizer.json").read_bytes()
    refused(lambda: prepare.main(["--input", str(corpus_file), "--out_dir", str(model_dir), "--quiet"]),
            "holds files prepare.py did not write (ckpt.pt, config.json, log.jsonl)", "--overwrite")
    assert (model_dir / "tokenizer.json").read_bytes() == before
    (tmp_path / "file").write_text("x")
    refused(lambda: prepare.main(["--input", str(corpus_file), "--out_dir", str(tmp_path / "file"), "--quiet"]),
            "exists and is not a directory")
