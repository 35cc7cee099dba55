"""
Where a script runs: the device and autocast dtype ("auto" chooses), torchrun's processes, the
code that produced a run, and the hardware numbers behind MFU and compile-time reports.
"""
import glob, hashlib, os, subprocess, time, warnings
from dataclasses import dataclass

import torch

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def device_named(name):
    """A device name this code understands."""
    return name in ("auto", "cpu", "mps", "cuda") or name.startswith("cuda:") and name[5:].isdigit()


def device_present(name):
    """The device exists on this machine (auto always does)."""
    if name.startswith("cuda"):
        return torch.cuda.device_count() > int(name[5:] or 0)
    return name != "mps" or torch.backends.mps.is_available()


def pick_device(name="auto"):
    """auto = cuda, then mps, then cpu; any other name as given (check it with device_present)."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def resolve_dtype(device, dtype="auto"):
    """The autocast dtype: "auto" means bf16 where the hardware computes it natively (CUDA, and CPUs
    with AMX or AVX512-BF16), else fp32."""
    if dtype == "auto":
        kind = torch.device(device).type
        native = kind == "cuda" or (kind == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return "bfloat16" if native else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r}: auto, float32 or bfloat16")
    return dtype


def flex_trains_on(device):
    """Whether the installed torch's FlexAttention has a backward pass on this device: on CUDA it
    has; on a CPU torch 2.13 has none (it raises NotImplementedError), which a tiny probe finds out
    in milliseconds, so a later torch that has one is allowed without a change here."""
    device = pick_device(device)
    if torch.device(device).type == "cuda":
        return True
    try:
        from torch.nn.attention.flex_attention import flex_attention
        q = torch.zeros(1, 1, 128, 16, device=device, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile": a probe
            flex_attention(q, q, q).sum().backward()
        return True
    except (ImportError, NotImplementedError, RuntimeError):
        return False


def autocast(device, dtype):
    """Mixed precision for `dtype` "bfloat16" (matrix products in bf16, sums and norms in fp32);
    a no-op context for "float32"."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


@dataclass
class Processes:
    """This process' place among torchrun's: rank 0 (the master) writes files and prints."""
    rank: int = 0
    world: int = 1
    local: int = 0
    device: str = "cpu"
    ddp: bool = False

    @property
    def master(self):
        return self.rank == 0


def start(device):
    """Join torchrun's process group when launched by it (nccl on CUDA, gloo elsewhere); each
    process then takes the GPU of its local rank. Returns the Processes of this one."""
    device = pick_device(device)
    if int(os.environ.get("RANK", -1)) == -1:
        return Processes(device=device)
    import torch.distributed as dist
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    local = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    return Processes(dist.get_rank(), dist.get_world_size(), local, device, ddp=True)


def stop(procs):
    if procs.ddp:
        torch.distributed.destroy_process_group()


def code_version(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """Which code produced a run: the sha256 of the repository's Python files (the root, support/ and
    config/; always there), and the git commit, with `dirty` when tracked files differ from it (None
    without git)."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "support", "*.py"))
                       + glob.glob(os.path.join(root, "config", "*.py"))):
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read() + b"\0")

    def git(*args):
        try:
            r = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return dict(commit=commit, dirty=dirty, source_sha256=h.hexdigest())


def device_peak_flops(device, dtype=torch.float32):
    """Peak dense bf16 FLOP/s of known GPUs; on a CPU, the measured matmul rate in `dtype` (so CPU
    'MFU' reads as a share of what this CPU's matmul achieves, not of a datasheet number)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
                 "L40S": 362e12, "4090": 165e12, "A10": 125e12}
        return next((v for k, v in table.items() if k in name), None)
    if device.type == "cpu":
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        a @ b
        t = time.perf_counter()
        for _ in range(8):
            a @ b
        return 8 * 2 * 1024 ** 3 / (time.perf_counter() - t)
    return None


def compile_seconds():
    """Seconds this process has spent in torch.compile so far (tracing and code generation of the
    forward and backward graphs), read from dynamo's own timers."""
    from torch._dynamo.utils import compilation_time_metrics as spent
    return sum(sum(spent.get(k, ())) for k in ("_compile.compile_inner", "backward._backward_impl"))


def wrap(model, compile, procs, backend="inductor"):
    """The model as the training step calls it: compiled (start-up then reports the seconds each
    compilation took) and wrapped in DistributedDataParallel under torchrun. `backend` is
    torch.compile's (bench.py's tests trace with aot_eager: the same graphs, no code generation)."""
    if compile:
        from tqdm import tqdm
        if torch.device(procs.device).type == "cpu":
            # inductor's CPU kernels add into shared rows with atomics when several threads run (the
            # backward of the embedding, of the gather of the masked positions): the float sums come
            # in another order each time, and no two runs, nor a resumed run, would agree bitwise.
            # Its deterministic kernels cost little here. (On CUDA, see bench.py gpu.)
            torch.use_deterministic_algorithms(True)
        # the masked positions (h[labels != -100]: a data-dependent count) are traced into the graph
        # instead of breaking it in three, whose last two would recompile when the count changes
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        model = torch.compile(model, backend=backend)  # compiles at step 1 and at each stage switch
        reported = [compile_seconds()]  # what this process compiled before (another run in it)

        def before_step(module, args, kwargs):  # runs outside the compiled code, before each forward
            # the number of documents in a batch varies: compile for any number from the start.
            # Left to itself dynamo compiles for the first batch's count, then again for any count,
            # and a step's kernels (so its float sums) would depend on which counts came before:
            # a resumed run would not continue bitwise.
            if kwargs.get("cu_seqlens") is not None:
                torch._dynamo.mark_dynamic(kwargs["cu_seqlens"], 0)
            spent = compile_seconds() - reported[0]  # what the previous step spent compiling
            if procs.master and spent > 1:
                reported[0] += spent
                tqdm.write(f"torch.compile: {spent:.0f} s")
        model.register_forward_pre_hook(before_step, with_kwargs=True)
    if procs.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[procs.local] if procs.device.startswith("cuda") else None)
    return model
