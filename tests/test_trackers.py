"""--tracker: TensorBoard's event files and W&B's offline run files, read back and compared with
log.jsonl, after an uninterrupted run and after a run killed past a checkpoint and resumed (every
step exactly once); a tracker that is not installed or cannot start is one line before training;
without a tracker nothing is imported and the log is the same."""
import glob, json, os, struct, subprocess, sys

import numpy as np
import pytest
from conftest import ROOT
from test_faults import one_line, refused, run

import train

ARGS = ["--stages=[(0, 64, 2, 1e4)]", "--max_steps=8", "--eval_windows=2", "--eval_interval=3", "--ckpt_interval=2",
        "--lr_warmup=0.2", "--dtype=float32", "--progress=False", "--demo=False"]


def log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def numbers(rows):
    """{name: {step: value}} of every numeric field of every row (what a tracker must show)."""
    out = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                assert r["step"] not in out.setdefault(k, {}), f"{k} twice at step {r['step']} in log.jsonl"
                out[k][r["step"]] = float(v)
    return out


def strip(rows):
    return [{k: v for k, v in r.items() if k != "tok_s"} for r in rows]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_data):
    """The run without a tracker, uninterrupted; and which tracker packages it imported."""
    out = tmp_path_factory.mktemp("plain") / "out"
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print('imported:', sorted({m.split('.')[0] for m in sys.modules} & {'wandb', 'tensorboard'}))")
    r = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "train.py"), *ARGS, f"--data_dir={tiny_data}",
                        f"--out_dir={out}"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def killed_then_resumed(out, data, tracker, env=None, after_kill=lambda: None):
    """A run killed after step 6's model files (its ckpt.pt is step 4's; steps 5 and 6 were logged
    and sent), then resumed to the end."""
    args = [*ARGS, f"--data_dir={data}", f"--out_dir={out}", f"--tracker={tracker}"]
    r = run("train.py", *args, kill_at="model.safetensors:after:3", env=env)
    assert r.returncode < 0, r.stderr
    import torch
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 4 and max(r["step"] for r in log(out)) == 6
    after_kill()
    r = run("train.py", *args, "--resume=True", env=env)
    assert r.returncode == 0, r.stderr


def test_without_a_tracker_nothing_is_imported_and_the_log_is_the_same(plain, tmp_path, tiny_data):
    out, stdout = plain
    assert "imported: []" in stdout
    assert "tracker" not in log(out)[0]["config"], "how a run reports is not a setting of how it trains"
    r = run("train.py", *ARGS, f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'tb'}", "--tracker=tensorboard")
    assert r.returncode == 0, r.stderr
    assert strip(log(tmp_path / "tb")) == strip(log(out))


def test_tensorboard_has_every_step_once_after_a_kill_and_a_resume(plain, tmp_path, tiny_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def events(out):
        acc = EventAccumulator(str(out), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
        acc.Reload()
        return acc
    out = tmp_path / "run"

    def written_after_the_checkpoint():
        assert max(e.step for e in events(out).Scalars("loss")) > 4, "the killed run wrote events after step 4"
    killed_then_resumed(out, tiny_data, "tensorboard", after_kill=written_after_the_checkpoint)
    assert len(glob.glob(str(out / "events.out.tfevents.*"))) == 2
    rows = log(out)
    assert strip(rows) == strip(log(plain[0])), "the resumed run's log is the uninterrupted one's"
    acc, want = events(out), numbers(rows)
    assert set(acc.Tags()["scalars"]) == set(want)
    for name, values in want.items():
        got = acc.Scalars(name)
        assert [e.step for e in got] == sorted(values), (name, [e.step for e in got])  # each step once, in order
        assert [e.value for e in got] == [np.float32(values[s]) for s in sorted(values)], name  # tok_s: the resumed run's
    for tag, value in (("config", rows[0]["config"]), ("code", rows[0]["code"])):
        (text,) = acc.Tensors(f"{tag}/text_summary")
        assert text.step == 0 and json.loads(text.tensor_proto.string_val[0].decode()) == value


# ------------------------------------------------------------------------------------------
# W&B's offline run files: a LevelDB-style log (32 KiB blocks of records, each with a 7-byte header:
# crc32c, length, type: full, first, middle or last piece) after a 7-byte W&B header; each record is
# a protobuf Record of wandb's own schema

def wandb_records(path):
    from wandb.proto import wandb_internal_pb2
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, piece = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece, pos = piece + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            piece = b""
            yield record
        elif kind == 0:
            break


def wandb_history(path):
    """(the run record, {step: {name: value}}) of an offline run file."""
    run, history = None, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = items.pop("_step")
            assert step not in history, f"step {step} twice in {path}"
            history[step] = {k: float(v) for k, v in items.items() if not k.startswith("_")}
    return run, history


def test_wandb_offline_has_every_step_once_after_a_kill_and_a_resume(plain, tmp_path, tiny_data):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    killed_then_resumed(out, tiny_data, "wandb", env=env)
    rows = log(out)
    assert strip(rows) == strip(log(plain[0]))
    run_id = json.loads((out / "tracker.json").read_text())["wandb_run_id"]
    starts = sorted(glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}")))
    assert len(starts) == 2, "the killed start and the resumed one: one W&B run id, a directory each"
    # the newest directory holds the whole run, every step once, as log.jsonl has it
    newest = os.path.join(starts[-1], f"run-{run_id}.wandb")
    assert os.path.realpath(out / "wandb" / "latest-run") == starts[-1]
    record, history = wandb_history(newest)
    assert record.run_id == run_id
    config = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.config.update}
    assert config["code"] == rows[0]["code"] and all(config[k] == v for k, v in rows[0]["config"].items())
    want = {}
    for name, values in numbers(rows).items():
        for step, value in values.items():
            want.setdefault(step, {})[name] = value
    assert history == want


def test_a_tracker_that_cannot_work_is_one_line_before_training(tmp_path, tiny_data, monkeypatch):
    common = [f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'out'}", "--max_steps=2", "--progress=False",
              "--demo=False"]
    refused(lambda: train.main([*common, "--tracker=mlflow"]), "setting tracker='mlflow': must be '' (none), "
            "tensorboard or wandb")
    for kind, modules in (("wandb", ["wandb"]), ("tensorboard", ["tensorboard", "torch.utils.tensorboard"])):
        with monkeypatch.context() as m:
            for name in modules:
                m.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
            refused(lambda: train.main([*common, f"--tracker={kind}"]),
                    f"setting tracker='{kind}': must be a tracker whose package is installed (pip install {kind}")
    assert not (tmp_path / "out").exists(), "refused with the settings, before any work"
    # W&B without a login, online: refused when it starts, before the first step
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    env = {"HOME": str(tmp_path), "WANDB_MODE": "online"}
    r = run("train.py", *common, "--tracker=wandb", env=env)
    one_line(r, "train.py: error: --tracker=wandb: cannot start (", "wandb login")
    assert not (tmp_path / "out" / "ckpt.pt").exists()
