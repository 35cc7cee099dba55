# ModernBERT-base shape (22 x 768) with the paper's recipe, for one GPU (bf16, ~80 GB).
# 128 k tokens per step (64 x 1,024 x 2 micro-steps); stage 2 keeps it with 8 x 8,192 x 2.
preset = "base"
max_steps = 20000
seq_len = 1024
batch_size = 64
grad_accum = 2
stage2_start = 0.9
stage2_seq_len = 8192
lr_max, lr_min, warmup_steps = 8e-4, 8e-5, 1000
lr_cycles, lr_damping = 3, 0.5
eval_interval = 500
ckpt_interval = 1000
eval_windows = 64
