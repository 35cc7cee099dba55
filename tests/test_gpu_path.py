"""The GPU path exercised on a CPU: train.py with --compile=True (the real inductor backend, which
generates and compiles C++ kernels here, as it generates Triton kernels on a GPU) against the
eager run, and a resume within the compiled mode; FlexAttention compiled where this torch can
train with it. Compiling costs tens of seconds on a small CPU, so each mode compiles once, in this
process, and every assert shares it (a second model of the same shapes reuses the compiled code)."""
import json, os, shutil

import pytest
import torch

import train
from support import run_files
from support.runtime import flex_trains_on

# one stage of 2 x 256 tokens: longer than three half-windows (3 x 64), so the local layers take
# the block-wise path the default run takes, not the dense band of short rows
ARGS = ["--stages=[(0, 256, 2, 1e4)]", "--max_steps=4", "--ckpt_interval=2", "--eval_interval=2", "--eval_windows=2",
        "--lr_warmup=0.2", "--progress=False", "--demo=False"]


def rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def losses(out):
    return [r["loss"] for r in rows(out) if "loss" in r]


def weights(out):
    from safetensors.torch import load_file
    return load_file(os.path.join(out, "model.safetensors"))


def without_tok_s(out):
    return [{k: v for k, v in r.items() if k not in ("tok_s", "code")} for r in rows(out)]


def train_compiled(data, out, dtype, *more, snapshot_at=None):
    """train.main in this process, compiled; with snapshot_at, the output directory as it is right
    after that step's checkpoint is copied to <out>_at<step> (what a run killed there leaves)."""
    real = run_files.save_checkpoint

    def save(cfg, model, optimizer, step, *args):
        real(cfg, model, optimizer, step, *args)
        if step == snapshot_at:
            shutil.copytree(cfg.out_dir, f"{out}_at{step}")
    run_files.save_checkpoint = save
    try:
        train.main([f"--data_dir={data}", f"--out_dir={out}", f"--dtype={dtype}", "--compile=True", *ARGS, *more])
    finally:
        run_files.save_checkpoint = real


@pytest.fixture
def fresh_compiler():
    """What runtime.wrap sets for a compiled run (process-wide) is undone after the test."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    torch._dynamo.config.capture_dynamic_output_shape_ops = False
    torch.use_deterministic_algorithms(False)


# compiled vs eager: the same batches and the same arithmetic up to the order of float sums (fused
# kernels); in bf16 inductor also keeps intermediates of fused operations in fp32, which eager
# rounds to bf16 (measured: 3e-7 relative in fp32, 4e-4 in bf16, over the 4 steps)
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-3}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_training_equals_eager_and_resumes_bitwise(tmp_path, tiny_data, fresh_compiler, dtype):
    """An eager run, a compiled run, and (in fp32: bf16 takes the same path, and each run costs
    time) the compiled run resumed from its step-2 checkpoint."""
    train.main([f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'eager'}", f"--dtype={dtype}", "--compile=False",
                *ARGS])
    train_compiled(tiny_data, tmp_path / "compiled", dtype, snapshot_at=2 if dtype == "float32" else None)
    # one graph for every batch: no graph break at the masked positions, no recompilation when the
    # number of documents changes (runtime.wrap)
    assert fresh_compiler["stats"]["unique_graphs"] == 1, dict(fresh_compiler["stats"])
    if dtype == "float32":
        train_compiled(tiny_data, tmp_path / "compiled_at2", dtype, "--resume=True")
    runs = tmp_path
    eager, compiled = losses(runs / "eager"), losses(runs / "compiled")
    assert len(eager) == len(compiled) == 4
    diff = max(abs(a - b) / abs(a) for a, b in zip(eager, compiled))
    print(f"compiled vs eager, {dtype}: largest relative loss difference over 4 steps {diff:.2e}")
    assert diff < TOLERANCE[dtype], (eager, compiled)
    val = [[r["val_loss"] for r in rows(runs / d) if "val_loss" in r] for d in ("eager", "compiled")]
    assert len(val[0]) == 2 and max(abs(a - b) / a for a, b in zip(*val)) < TOLERANCE[dtype], val
    if dtype != "float32":
        return
    # within the compiled mode a resume continues bitwise: the same weights, the same log but for tok_s
    wa, wb = weights(runs / "compiled"), weights(runs / "compiled_at2")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert without_tok_s(runs / "compiled") == without_tok_s(runs / "compiled_at2")


def test_compiled_model_takes_any_number_of_documents_one_included(fresh_compiler):
    """The default run's stage 2 reads one 2,048-token window per step, often all of one document:
    cu_seqlens of size 2. The model as runtime.wrap compiles it (cu_seqlens dynamic from the first
    step) must take 3, 1 and 2 documents with one graph and give the eager outputs. aot_eager traces
    the same graph and guards as inductor (where a specialised size would fail), without code
    generation, so this takes seconds."""
    from cmbert import CMBert, config_from_preset
    from support.runtime import Processes, wrap
    torch.manual_seed(0)
    model = CMBert(config_from_preset("tiny", vocab_size=512, max_seq_len=256))
    compiled = wrap(model, True, Processes(), backend="aot_eager")
    ids = torch.randint(5, 512, (1, 256))
    labels = torch.where(torch.rand(1, 256) < 0.3, ids, -100)
    for cu in ([0, 100, 180, 256], [0, 256], [0, 60, 256]):
        cu = torch.tensor(cu, dtype=torch.int32)
        got = compiled(ids, labels=labels, cu_seqlens=cu)[1]
        want = model(ids, labels=labels, cu_seqlens=cu)[1]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert fresh_compiler["stats"]["unique_graphs"] == 1, dict(fresh_compiler["stats"])


def test_flex_attention_compiled_trains_where_this_torch_can(tmp_path, tiny_data, fresh_compiler):
    if not flex_trains_on("cpu"):
        pytest.skip(f"torch {torch.__version__}: FlexAttention has no backward pass on a CPU (NotImplementedError), "
                    "so it cannot train here; train.py refuses --attn_backend=flex on this device")
    train_compiled(tiny_data, tmp_path / "flex", "float32", "--attn_backend=flex")
    train.main([f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'eager'}", "--dtype=float32", "--compile=False",
                *ARGS])
    flex, eager = losses(tmp_path / "flex"), losses(tmp_path / "eager")
    assert max(abs(a - b) / abs(a) for a, b in zip(flex, eager)) < 1e-4, (flex, eager)


# ------------------------------------------------------------------------------------------
# bench.py gpu, the first minutes on a GPU, run here on a CPU: its checks and its table (not its
# speed), with aot_eager as torch.compile's backend (dynamo and AOTAutograd trace the forward and
# backward exactly as for inductor, without generating code; inductor itself is tested above)

GPU_ON_CPU = ["gpu", "--device=cpu", "--dtype=float32", "--preset=tiny", "--shapes=1x256", "--check_shape=2x256"]


def test_the_gpu_command_checks_every_backend_and_writes_one_json(tmp_path, fresh_compiler):
    import bench
    out = tmp_path / "gpu.json"
    report = bench.main([*GPU_ON_CPU, "--steps=1", "--warmup=1", "--only=torch compiled packed,ModernBERT", "--compile_backend=aot_eager",
                         f"--out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report)) and report["ok"]
    checks = {c["check"]: c for c in report["checks"]}
    flex = report["backends"]["flex"] == "available"
    for backend in ("torch", "flex", "flash"):
        for rows in ("packed", "padded"):
            for layer in ("local", "global"):
                c = checks[f"attention {backend} {rows} {layer}"]
                if backend == "torch" or (backend == "flex" and flex):  # FlexAttention's forward runs on a CPU
                    assert c["ok"] and c["error"] <= c["tolerance"] <= 2e-3, c
                else:
                    assert c["ok"] is None and "no CUDA device" in c["skipped"], c
            for compiled in ("", " compiled"):
                c = checks.get(f"model {backend}{compiled} {rows}")
                if backend == "torch" and compiled:
                    assert c["ok"] and c["against"] == "torch eager", c
                elif backend == "torch":
                    assert c is None, "torch eager is the reference"
                else:
                    assert c["ok"] is None and c["skipped"], c  # flex: no backward on a CPU; flash: no CUDA
    assert report["bitwise_repeatable"] == {"torch eager": True, "torch compiled": True}
    labels = [r["label"] for r in report["rows"]]
    assert labels == ["cmbert torch compiled packed", "ModernBERT sdpa"], labels
    assert all(r["tok_s"] > 0 and r["mfu_measured"] > 0 and r["vs_modernbert"] > 0 and r["mfu"] is None
               for r in report["rows"]), report["rows"]


def test_the_gpu_command_fails_loudly_where_a_check_fails(tmp_path, fresh_compiler, monkeypatch):
    import bench
    import cmbert
    real = cmbert.local_attention
    monkeypatch.setattr(cmbert, "local_attention", lambda q, *a: real(q, *a) * 1.01)  # a 1% error in local layers
    out = tmp_path / "gpu.json"
    with pytest.raises(SystemExit) as e:
        bench.main([*GPU_ON_CPU, "--steps=0", "--compile_backend=none", f"--out={out}"])
    assert str(e.value.code).startswith("bench.py: error: attention torch packed local failed (beyond its tolerance)")
    assert "\n" not in str(e.value.code) and str(out) in str(e.value.code)
    report = json.loads(out.read_text())
    assert report["ok"] is False and not [c for c in report["checks"] if c["check"].endswith("global") and not c["ok"]
                                          and c["check"].startswith("attention torch")]
