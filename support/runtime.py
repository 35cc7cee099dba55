"""
Where a script runs: the device and autocast dtype ("auto" chooses), torchrun's processes, the
code that produced a run, and the hardware numbers behind MFU and compile-time reports.
"""
import glob, hashlib, os, subprocess, time
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


def wrap(model, compile, procs):
    """The model as the training step calls it: compiled (start-up then reports the seconds each
    compilation took) and wrapped in DistributedDataParallel under torchrun."""
    if compile:
        from tqdm import tqdm
        model = torch.compile(model)  # compiles at step 1, again when the document count first changes, at a stage switch
        reported = [0.0]

        def print_compile_time(*_):  # runs before each step: what the previous step spent compiling
            spent = compile_seconds() - reported[0]
            if procs.master and spent > 1:
                reported[0] += spent
                tqdm.write(f"torch.compile: {spent:.0f} s")
        model.register_forward_pre_hook(print_compile_time)
    if procs.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[procs.local] if procs.device.startswith("cuda") else None)
    return model
