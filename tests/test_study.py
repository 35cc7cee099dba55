"""study.py: settings x seeds one after another, finished runs skipped, a killed study resumed, and a
table whose verdicts come from the seeds' spread."""
import json, os, subprocess, sys

import pytest
from conftest import ROOT

import study


def write_study(path, data_dir, out_dir, seeds=(1, 2)):
    path.write_text(f"""
out_dir = {str(out_dir)!r}
seeds = {list(seeds)!r}
common = ["--data_dir={data_dir}", "--max_steps=4", "--stages=[(0, 64, 2, 1e4), (0.5, 128, 1, 8e4)]",
          "--eval_windows=2", "--eval_long_docs=3", "--eval_interval=2", "--ckpt_interval=2", "--dtype=float32",
          "--demo=False", "--progress=False", "--lr_warmup=0.25"]
settings = {{"default": [], "token-level masking": ["--whole_word=False"]}}
""", encoding="utf-8")
    return path


def test_a_study_runs_once_resumes_and_tabulates(tmp_path, long_data):
    out = tmp_path / "study"
    spec = write_study(tmp_path / "s.py", long_data, out)
    runs = [out / name / f"seed{s}" for name in ("default", "token-level_masking") for s in (1, 2)]
    # a killed study: one run finished, one stopped after its first checkpoint
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *study.read_study(str(spec))[2],
                        "--seed=1", f"--out_dir={runs[0]}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *study.read_study(str(spec))[2],
                        "--whole_word=False", "--seed=2", "--max_steps=4", f"--out_dir={runs[3]}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    import torch
    ckpt = torch.load(runs[3] / "ckpt.pt", weights_only=True)
    ckpt["step"] = 2  # as if killed after the checkpoint of step 2: the driver resumes it
    torch.save(ckpt, runs[3] / "ckpt.pt")
    finished_log = (runs[0] / "log.jsonl").read_text()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "study.py"), str(spec), "--dry_run"], capture_output=True,
                       text=True, cwd=ROOT)
    assert [line.split(": ")[1] for line in r.stdout.splitlines()] == ["finished", "new", "new", "resume at step 2"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "study.py"), str(spec)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (runs[0] / "log.jsonl").read_text() == finished_log, "a finished run is not run again"
    assert "[2/4]" in r.stdout and "[1/4]" not in r.stdout and "[4/4] " + str(runs[3]) + ": resuming at step 2" in r.stdout
    assert all(study.progress(str(run)) == (4, 4) for run in runs)
    numbers = json.loads((out / "study.json").read_text())["figures"]
    gain = numbers["default"]["val gain (nats)"]
    logs = [[json.loads(x) for x in open(run / "log.jsonl")] for run in runs[:2]]
    assert gain["values"] == [[row for row in log if "val_gain" in row][-1]["val_gain"] for log in logs]
    other = numbers["token-level masking"]["val gain (nats)"]
    assert other["diff"] == pytest.approx(other["mean"] - gain["mean"]) and other["diff_se"] > 0
    assert other["verdict"] in ("beyond noise", "within noise")
    md = (out / "study.md").read_text()
    assert "| default | 2 |" in md and "| token-level masking | " in md and (out / "study.png").stat().st_size > 10000


def test_bad_study_files_and_a_second_driver_are_refused(tmp_path, long_data):
    out = tmp_path / "study"
    spec = write_study(tmp_path / "s.py", long_data, out)
    os.makedirs(out)
    (out / ".study.lock").write_text(str(os.getpid()))  # a live process holds the study
    r = subprocess.run([sys.executable, os.path.join(ROOT, "study.py"), str(spec)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode != 0 and "another study driver" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for text, message in [("seeds = [1]\nout_dir = 'x'\n", "`settings` must be"),
                          ("settings = {'a': []}\nseeds = []\nout_dir = 'x'\n", "`seeds` must be"),
                          ("settings = {'a': ['--seed=3']}\nseeds = [1]\nout_dir = 'x'\n", "--seed=3: the study sets"),
                          ("settings = {'a': []}\nseeds = [1]\nout_dir = 'x'\nbaseline = 'b'\n", "baseline 'b'")]:
        (tmp_path / "bad.py").write_text(text)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "study.py"), str(tmp_path / "bad.py")],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
