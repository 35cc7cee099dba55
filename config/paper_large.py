# The paper's model (28 x 1024, intermediate 2624, 16 heads, RMSNorm, RoPE 80k / 10k) and two-stage
# recipe, for a GPU cluster: torchrun --nnodes=N --nproc_per_node=8 train.py config/paper_large.py
# Global batch ~4.2M tokens: 256 windows of 1,024 tokens x 16 micro-steps (ModernBERT used ~4.7M), on any
# number of GPUs up to 32 (8 GPUs take 32 windows each per micro-step); stage 2 at 8,192 keeps the tokens
# per step with 32 windows per micro-step. On more GPUs, raise both batch sizes and lower grad_accum by the
# same factor: the same step. Budget, peak learning rate and the damped-cosine envelope are the paper's
# *unconfirmed* details (docs/method.md §3-4): adjust.
preset = "large"
norm = "rmsnorm"
compile = True
max_steps = 250000
grad_accum = 16
stages = [dict(start=0.0, seq_len=1024, batch_size=256, rope_theta=80000.0),
          dict(start=0.9, seq_len=8192, batch_size=32, rope_theta=80000.0)]
mask_min, mask_max, mask_warmup = 0.15, 0.30, 0.05
lr_max, lr_min, lr_warmup = 5e-4, 5e-5, 0.012     # warm-up: 3,000 of the 250,000 steps
lr_cycles, lr_damping = 4, 0.5
eval_interval = 2000
ckpt_interval = 2000
eval_windows = 256
