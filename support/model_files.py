"""
Model folders on disk: cmbert's own (save_pretrained: model.safetensors + config.json) and
Hugging Face exports (save_hf: transformers' ModernBERT for LayerNorm models, cmbert's code with
trust_remote_code for RMSNorm ones), with their tokenizer files and, with those, the description
that makes the folder a sentence-transformers model, and the check that a folder and its tokenizer
are whole and fit before fine-tuning. Loading is exact or refused: a
folder whose config, weights or tokenizer do not fit is one line (BadFile, a ValueError) naming
the file. cmbert.py's save/load methods call these; nothing here imports the lecture files.
"""
import json, os
from dataclasses import asdict, fields

from .errors import BadFile
from .files import copy_file, sha256, write_bytes, write_json
from .tokens import HF_NAMES, check_fits, check_recorded, load_tokenizer, model_ids

# Config fields that shape the weights or change what they compute: a saved folder fixes them.
WEIGHT_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "intermediate_size", "norm")
HERE = os.path.dirname(os.path.abspath(__file__))  # support/: hf_cmbert.py
ROOT = os.path.dirname(HERE)                       # the repository: cmbert.py


def save_weights(model, path):
    """A model's clean state dict as safetensors, serialised in memory and written under a temporary
    name until complete (a full disk is then an OSError naming the file, like any other write)."""
    from safetensors.torch import save
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict_clean().items()}
    write_bytes(path, save(sd, metadata={"format": "pt"}))  # "format": what transformers checks for


def load_weights(path):
    """The tensors of a model.safetensors (compiled models' `_orig_mod.` prefixes removed)."""
    from safetensors.torch import load_file
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (not a folder written by save_pretrained or save_hf)")
    try:
        sd = load_file(path)
    except Exception as e:  # safetensors raises its own error type for truncated or garbled files
        raise BadFile(f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return {k.replace("_orig_mod.", ""): v for k, v in sd.items()}


def save_pretrained(model, out_dir, extra_config=None):
    os.makedirs(out_dir, exist_ok=True)
    save_weights(model, os.path.join(out_dir, "model.safetensors"))
    write_json(os.path.join(out_dir, "config.json"), {**asdict(model.cfg), **(extra_config or {})})


def load_pretrained(cls, config_cls, model_dir, **kwargs):
    """An instance of `cls` with the folder's weights: the encoder must match exactly. Another
    model class's head is not this one's business: an MLM folder has a head and decoder that a
    classifier or span model does not use; a fine-tuned classifier folder has a classifier an MLM
    ignores. A fresh classifier is what fine-tuning starts from, so it may be missing."""
    names = {f.name for f in fields(config_cls)}
    cfg = read_config(model_dir, config_cls, **{k: v for k, v in kwargs.items() if k in names})
    model = cls(cfg, **{k: v for k, v in kwargs.items() if k not in names})
    path = os.path.join(model_dir, "model.safetensors")
    sd = load_weights(path)
    own = {k: v for k, v in model.state_dict().items() if k != "decoder.weight"}  # tied: not stored
    other = lambda k: k.split(".")[0] in ("head", "decoder", "classifier") and k not in own  # noqa: E731
    unknown = [k for k in sd if k not in own and not other(k)]
    missing = [k for k in own if k not in sd and not k.startswith("classifier.")]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    more = lambda xs: f" (and {len(xs) - 1} more)" if len(xs) > 1 else ""  # noqa: E731
    if unknown:
        raise BadFile(f"{path}: tensor {unknown[0]!r}{more(unknown)} is not part of the model that "
                      f"config.json describes; the weights do not match the config")
    if missing:
        raise BadFile(f"{path}: no tensor {missing[0]!r}{more(missing)}, which the model that config.json "
                      f"describes needs; the weights do not match the config")
    if wrong:
        k = wrong[0]
        raise BadFile(f"{path}: {k} has shape {tuple(sd[k].shape)}, config.json's model needs "
                      f"{tuple(own[k].shape)}; the weights do not match the config")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return model


def read_config(model_dir, config_cls, **overrides):
    """The model config of a folder, from its config.json: cmbert's own (save_pretrained), an export
    (save_hf: model_type "cmbert" for RMSNorm, "modernbert" for LayerNorm), or any transformers
    ModernBERT config that cmbert computes exactly (read as norm="layernorm"). Overrides change
    the other fields (attn_backend, dropout, pooling); refuses anything else."""
    import json
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (not a folder written by save_pretrained or save_hf)")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFile(f"{path}: not valid JSON ({e})") from None
    if not isinstance(saved, dict):
        raise BadFile(f"{path}: not a cmbert config (a JSON object is expected)")
    names = {f.name for f in fields(config_cls)}
    kind = saved.get("model_type")
    if kind == "modernbert":
        values = config_from_modernbert(saved, path, config_cls())
    elif kind in ("cmbert", None):
        unknown = sorted(set(saved) - names - {"tokenizer_sha256"})  # train.py records which tokenizer
        if kind is None and unknown:  # cmbert's own config.json holds the config's fields and nothing else
            raise BadFile(f"{path}: not a cmbert config (unknown key {unknown[0]!r})")
        values = {k: v for k, v in saved.items() if k in names}
        absent = [k for k in WEIGHT_FIELDS if k not in values]
        if absent:
            raise BadFile(f"{path}: not a cmbert config (no {absent[0]!r})")
    else:
        raise BadFile(f"{path}: model_type {kind!r} is neither a cmbert nor a ModernBERT config")
    for k in WEIGHT_FIELDS:
        if k in overrides and overrides[k] != values[k]:
            raise BadFile(f"{path}: says {k}={values[k]!r}; the weights cannot be loaded exactly as {k}={overrides[k]!r}")
    try:
        return config_cls(**{**values, **overrides})
    except (AssertionError, TypeError, ValueError) as e:
        raise BadFile(f"{path}: invalid config ({e})") from None


def check_model_dir(model_dir, config_cls, weights, lengths):
    """Before fine-tuning: the folder is whole (config.json, and model.safetensors when `weights`)
    and every task's length ({task: max_len}) fits the model. Returns the config."""
    for name in ("config.json",) + (("model.safetensors",) if weights else ()):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise BadFile(f"{model_dir}: no {name} (a directory written by train.py / save_pretrained)")
    cfg = read_config(model_dir, config_cls)
    for task, max_len in lengths.items():
        if max_len > cfg.max_seq_len:
            raise BadFile(f"{task}: --max_len {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
    return cfg


def check_tokenizer(model_dir, cfg, tokenizer=None):
    """The tokenizer (the folder's own, or `tokenizer`) is the model's: the same special ids, a
    vocabulary that fits, the same file as the folder's tokenizer.json and as the sha256 its
    config.json records. Returns (tokenizer, its path)."""
    tok_path = tokenizer or os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise BadFile(f"{tok_path}: no tokenizer (pass --tokenizer)")
    tok = load_tokenizer(tok_path)
    check_fits(tok, tok_path, cfg.vocab_size, model_ids(cfg))
    own = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(own):
        check_recorded(tok_path, sha256(own), f"{tok_path} is not the tokenizer of {model_dir} (its tokenizer.json differs)")
    with open(os.path.join(model_dir, "config.json")) as f:
        recorded = json.load(f).get("tokenizer_sha256")
    check_recorded(tok_path, recorded, f"{tok_path}: sha256 {{got}}… is not the tokenizer_sha256 {{want}}… that "
                                       f"{model_dir}/config.json records")
    return tok, tok_path


def config_from_modernbert(c, path, d):
    """Config fields from a transformers ModernBertConfig dict (v4 or v5 keys; missing keys take
    transformers' defaults; `d` holds cmbert's defaults). With norm="layernorm" cmbert computes
    exactly what ModernBertForMaskedLM computes, as long as the options below have ModernBERT's
    default values."""
    exact = dict(norm_bias=False, attention_bias=False, mlp_bias=False, classifier_bias=False, decoder_bias=True,
                 hidden_activation="gelu", classifier_activation="gelu", tie_word_embeddings=True)
    for k, want in exact.items():
        if c.get(k, want) != want:
            raise BadFile(f"{path}: {k}={c[k]!r}; cmbert computes ModernBERT only with {k}={want!r}")
    n_layer, every = c.get("num_hidden_layers", 22), c.get("global_attn_every_n_layers", 3)
    types = c.get("layer_types") or ["full_attention" if i % every == 0 else "sliding_attention" for i in range(n_layer)]
    if types != ["full_attention" if i % every == 0 else "sliding_attention" for i in range(n_layer)]:
        raise BadFile(f"{path}: layer_types is not 'every {every}th layer global from layer 0', the only layout cmbert has")
    rope = c.get("rope_parameters") or {}
    theta = {}
    for kind, old_key, default in [("full_attention", "global_rope_theta", 160000.0),
                                   ("sliding_attention", "local_rope_theta", 10000.0)]:
        p = rope.get(kind, {})
        if p.get("rope_type", "default") != "default":
            raise BadFile(f"{path}: rope_type {p['rope_type']!r} for {kind}; cmbert has plain RoPE only")
        theta[kind] = float(p.get("rope_theta", c.get(old_key, default)))
    return dict(vocab_size=c.get("vocab_size", 50368), n_layer=n_layer, n_head=c.get("num_attention_heads", 12),
                n_embd=c.get("hidden_size", 768), intermediate_size=c.get("intermediate_size", 1152),
                local_window=c.get("local_attention", 128), global_every=every,
                rope_theta_global=theta["full_attention"], rope_theta_local=theta["sliding_attention"],
                norm="layernorm", norm_eps=c.get("norm_eps", 1e-5), max_seq_len=c.get("max_position_embeddings", 8192),
                embd_dropout=c.get("embedding_dropout", 0.0), attn_dropout=c.get("attention_dropout", 0.0),
                mlp_dropout=c.get("mlp_dropout", 0.0), classifier_dropout=c.get("classifier_dropout", 0.0),
                classifier_pooling=c.get("classifier_pooling", "cls"),
                pad_id=c.get("pad_token_id", d.pad_id), cls_id=c.get("cls_token_id", d.cls_id),
                sep_id=c.get("sep_token_id", d.sep_id), mask_id=c.get("mask_token_id", d.mask_id))


# ------------------------------------------------------------------------------------------
# Hugging Face export

def save_hf(model, out_dir, tokenizer_file=None):
    """norm="layernorm": transformers' own ModernBertForMaskedLM, the same architecture, no remote
    code. norm="rmsnorm": ModernBERT has no RMSNorm, so the folder carries cmbert.py and
    hf_cmbert.py (transformers' interfaces around cmbert's classes) and loads with
    trust_remote_code=True. config.json comes last: a folder without it is incomplete."""
    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)
    ids = dict(pad_token_id=cfg.pad_id, cls_token_id=cfg.cls_id, sep_token_id=cfg.sep_id, bos_token_id=cfg.cls_id,
               eos_token_id=cfg.sep_id, mask_token_id=cfg.mask_id)
    if cfg.norm == "layernorm":
        layer_types = ["full_attention" if cfg.is_global(i) else "sliding_attention" for i in range(cfg.n_layer)]
        config = dict(
            architectures=["ModernBertForMaskedLM"], model_type="modernbert", vocab_size=cfg.vocab_size,
            hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, hidden_activation="gelu", max_position_embeddings=cfg.max_seq_len,
            norm_eps=cfg.norm_eps, norm_bias=False, attention_bias=False, mlp_bias=False, decoder_bias=True,
            classifier_activation="gelu", classifier_bias=False, classifier_pooling=cfg.classifier_pooling,
            classifier_dropout=cfg.classifier_dropout, embedding_dropout=cfg.embd_dropout,
            attention_dropout=cfg.attn_dropout, mlp_dropout=cfg.mlp_dropout, tie_word_embeddings=True,
            local_attention=cfg.local_window, layer_types=layer_types, global_attn_every_n_layers=cfg.global_every,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_global},
                             "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta_local}},
            global_rope_theta=cfg.rope_theta_global, local_rope_theta=cfg.rope_theta_local,  # transformers 4.x
            **ids)
    else:
        for folder, name in ((ROOT, "cmbert.py"), (HERE, "hf_cmbert.py")):
            copy_file(os.path.join(folder, name), os.path.join(out_dir, name))
        config = dict(
            architectures=["HFCMBertForMaskedLM"], model_type="cmbert",
            auto_map={"AutoConfig": "hf_cmbert.HFCMBertConfig", "AutoModel": "hf_cmbert.HFCMBertModel",
                      "AutoModelForMaskedLM": "hf_cmbert.HFCMBertForMaskedLM",
                      "AutoModelForSequenceClassification": "hf_cmbert.HFCMBertForSequenceClassification"},
            **{**asdict(cfg), "attn_backend": "auto"}, tie_word_embeddings=True, **ids)
    if tokenizer_file:  # a sentence-transformers model needs its tokenizer: described only with one
        save_hf_tokenizer(out_dir, tokenizer_file, cfg)
        save_sentence_transformers(out_dir, cfg)
    save_weights(model, os.path.join(out_dir, "model.safetensors"))
    write_json(os.path.join(out_dir, "config.json"), config)


def save_hf_tokenizer(out_dir, tokenizer_file, cfg):
    """tokenizer.json plus what transformers' AutoTokenizer needs besides it: the names of the special
    tokens (padding, fill-mask), the longest input, and the inputs the model takes (no
    token_type_ids: the model has no segment embedding)."""
    check_fits(load_tokenizer(tokenizer_file), str(tokenizer_file), cfg.vocab_size, model_ids(cfg))
    copy_file(str(tokenizer_file), os.path.join(out_dir, "tokenizer.json"))
    write_json(os.path.join(out_dir, "special_tokens_map.json"), HF_NAMES)
    write_json(os.path.join(out_dir, "tokenizer_config.json"), dict(
        tokenizer_class="PreTrainedTokenizerFast", **HF_NAMES, model_max_length=cfg.max_seq_len,
        model_input_names=["input_ids", "attention_mask"], padding_side="right", truncation_side="right",
        clean_up_tokenization_spaces=False))


def save_sentence_transformers(out_dir, cfg):
    """The folder as a sentence-transformers model: module 0 is the model in this folder (its
    encoder, through AutoModel), module 1 mean pooling over every real token, [CLS] and [SEP]
    included: the embedding of use.py --similarity and of the SimCLUE probe. The file formats are
    sentence-transformers' classic ones, which its versions 2 to 6 all read. trust_remote_code
    cannot be stored here (sentence-transformers strips it), so README.md tells the user."""
    write_json(os.path.join(out_dir, "modules.json"), [
        dict(idx=0, name="0", path="", type="sentence_transformers.models.Transformer"),
        dict(idx=1, name="1", path="1_Pooling", type="sentence_transformers.models.Pooling")])
    write_json(os.path.join(out_dir, "sentence_bert_config.json"), dict(max_seq_length=cfg.max_seq_len, do_lower_case=False))
    os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    write_json(os.path.join(out_dir, "1_Pooling", "config.json"), dict(
        word_embedding_dimension=cfg.n_embd, **{f"pooling_mode_{m}": m == "mean_tokens" for m in modes},
        include_prompt=True))
    write_json(os.path.join(out_dir, "config_sentence_transformers.json"), dict(
        model_type="SentenceTransformer", similarity_fn_name="cosine", prompts={}, default_prompt_name=None))
    remote = cfg.norm == "rmsnorm"
    write_bytes(os.path.join(out_dir, "README.md"), MODEL_CARD.format(
        max_len=cfg.max_seq_len, arg=", trust_remote_code=True" if remote else "",
        code="This is the RMSNorm model: its code is `cmbert.py` and `hf_cmbert.py` in this folder, so loading it "
             "needs\n`trust_remote_code=True`." if remote else
             "This is transformers' own ModernBERT (LayerNorm): no code of its own.",
        tok_note="The tokenizer is a plain `tokenizers` file and needs no code. `AutoTokenizer.from_pretrained` reads "
                 "config.json first,\nwhich names the model's code: give it `trust_remote_code=True` too, or load the "
                 "tokenizer as above.\n" if remote else "").encode("utf-8"))


MODEL_CARD = """---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [cmbert, fill-mask, feature-extraction, sentence-transformers]
---
# A cmbert (Chinese ModernBERT) model

Masked-LM weights and a complete tokenizer. The sentence embedding is the mean of the encoder's last
hidden states over every token, [CLS] and [SEP] included, for inputs of up to {max_len:,} tokens.
{code}

```python
from sentence_transformers import SentenceTransformer
embeddings = SentenceTransformer("path/to/this/folder"{arg}).encode(["今天天气很好。", "今天天气不错。"])

from transformers import pipeline
fill = pipeline("fill-mask", model="path/to/this/folder"{arg})

from transformers import PreTrainedTokenizerFast
tokenizer = PreTrainedTokenizerFast.from_pretrained("path/to/this/folder")  # the tokenizer alone: no code
```
{tok_note}"""
