# ModernBERT-base shape (22 x 768) with the paper's recipe, for one GPU (bf16, ~80 GB).
# 128k tokens per step in both stages: 64 x 1,024 x 2 micro-steps, then 8 x 8,192 x 2.
preset = "base"
max_steps = 20000
grad_accum = 2
stages = [dict(start=0.0, seq_len=1024, batch_size=64, rope_theta=80000.0),
          dict(start=0.9, seq_len=8192, batch_size=8, rope_theta=80000.0)]
lr_max, lr_min, lr_warmup = 8e-4, 8e-5, 0.05      # warm-up: 1,000 of the 20,000 steps
lr_cycles, lr_damping = 3, 0.5
eval_interval = 500
ckpt_interval = 1000
eval_windows = 64
