# The default run (python train.py): the whole recipe on a laptop CPU in about 8 minutes.
# 4 x 256 encoder, 700 steps of 2 x 1,024 tokens, the last 2% (14 steps) at 8,192 tokens.
# On a CPU with native bf16 (AMX / AVX512-BF16), dtype=auto trains in bf16 autocast (~1.3x faster).
preset = "tiny"
max_steps = 700
seq_len = 1024
batch_size = 2
stage2_start = 0.98
stage2_seq_len = 8192
mask_min, mask_max, mask_warmup = 0.15, 0.30, 0.05
lr_max, lr_min, warmup_steps = 3e-3, 3e-4, 50
lr_cycles, lr_damping = 2, 0.5
eval_interval = 100
ckpt_interval = 100
