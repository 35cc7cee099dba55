"""Hugging Face interop (save_hf for both norms, tokenizer files, pipelines), from_pretrained's refusals,
the usage script use.py, and the command-line habits of train.py / prepare.py."""
import ast, json, os, re, subprocess, sys

import pytest
import torch
import torch.nn.functional as F

from cmbert import CMBert, CMBertConfig, CMBertForSequenceClassification

transformers = pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**kw):
    return CMBertConfig(**{**dict(vocab_size=1024, n_layer=4, n_head=4, n_embd=64, intermediate_size=96,
                                  local_window=16), **kw})


def perturbed_model(norm, seed=0):
    """A model whose norms and biases are off their initial values, so they are compared too."""
    torch.manual_seed(seed)
    model = CMBert(small_config(norm=norm)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() < 2:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=["rmsnorm", "layernorm"])
def export(request, tiny_data, tmp_path_factory):
    """(cmbert model, export folder) for each norm, with the tiny dataset's tokenizer (1,024 tokens)."""
    model = perturbed_model(request.param)
    out = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_hf(out, tiny_data / "tokenizer.json")
    return model, out


def padded_batch():
    """Three rows longer than the local window (16), two of them padded."""
    torch.manual_seed(1)
    ids = torch.randint(5, 1000, (3, 70))
    mask = torch.ones_like(ids)
    mask[1, 40:], mask[2, 9:] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def test_masked_lm_logits_match(export):
    model, out = export
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    if model.cfg.norm == "layernorm":  # transformers' own class, no code in the folder
        assert type(hf).__name__ == "ModernBertForMaskedLM" and not list(out.glob("*.py"))
    else:
        assert type(hf).__name__ == "HFCMBertForMaskedLM" and {p.name for p in out.glob("*.py")} == {"cmbert.py", "hf_cmbert.py"}
    assert hf.decoder.weight.data_ptr() == hf.model.embeddings.tok_embeddings.weight.data_ptr()  # tied
    ids, mask = padded_batch()
    with torch.no_grad():
        ours, _ = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        back, _ = CMBert.from_pretrained(out).eval()(ids, mask)  # the export also loads back into cmbert
    valid = mask.bool()
    assert (ours[valid] - theirs[valid]).abs().max() <= 1e-4
    assert torch.equal(back, ours)


def test_the_tokenizer_alone_needs_no_code(export):
    """An export's tokenizer loads with no custom code, no prompt and no warning through
    PreTrainedTokenizerFast (AutoTokenizer reads config.json first, which for an RMSNorm model names
    cmbert's code: that is why the model card shows both)."""
    _, folder = export
    r = subprocess.run([sys.executable, "-c", f"from transformers import PreTrainedTokenizerFast as T; "
                        f"t = T.from_pretrained({str(folder)!r}); print(t('北京是中国的首都。').input_ids, "
                        f"t.mask_token, t.pad_token_id)"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    ids, mask, pad = r.stdout.rsplit(" ", 2)
    assert (mask, pad.strip()) == ("[MASK]", "0") and ids.startswith("[2, ") and ids.endswith(", 3]")
    assert "PreTrainedTokenizerFast.from_pretrained" in (folder / "README.md").read_text(encoding="utf-8")


def test_tokenizer_pipeline_and_embeddings(export):
    model, out = export
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    cfg = model.cfg
    assert [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [cfg.pad_id, cfg.cls_id, cfg.sep_id, cfg.mask_id]
    assert tok.unk_token == "[UNK]" and tok.model_max_length == cfg.max_seq_len
    batch = tok(["北京是中国的首都。", "你好[MASK]"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}  # no token_type_ids
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[0, 0] == cfg.cls_id and ids[0, -1] == cfg.sep_id and mask[0].all()
    n = int(mask[1].sum())
    assert ids[1, n - 2] == cfg.mask_id and ids[1, n - 1] == cfg.sep_id and (ids[1, n:] == cfg.pad_id).all() and n < ids.shape[1]

    # fill-mask: the pipeline's best guess is cmbert's own best guess at the [MASK]
    fill = transformers.pipeline("fill-mask", model=str(out), trust_remote_code=True)
    text = "今天天气很好，我们一起去[MASK]散步。"
    got = fill(text, top_k=3)
    enc = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits, _ = model(enc)
    at = (enc[0] == cfg.mask_id).nonzero()[0, 0]
    probs = logits[0, at].softmax(-1)
    assert [g["token"] for g in got] == probs.topk(3).indices.tolist()
    assert got[0]["score"] == pytest.approx(probs.max().item(), abs=1e-5) and "[MASK]" not in got[0]["sequence"]

    # AutoModel: the encoder's hidden states
    enc_model = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        h = enc_model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = model.model(ids, mask)
    assert (h[mask.bool()] - want[mask.bool()]).abs().max() <= 1e-4


def test_rmsnorm_export_runs_without_the_repository(export, tmp_path):
    """The export folder stands alone: in a process whose working directory is the folder and whose
    sys.path does not hold the repository, cmbert.py imports (torch only) and transformers loads the
    model with the logits of cmbert."""
    model, out = export
    if model.cfg.norm != "rmsnorm":
        pytest.skip("a LayerNorm export is transformers' own ModernBERT: no code travels with it")
    ids, mask = padded_batch()
    torch.save(dict(ids=ids, mask=mask), tmp_path / "batch.pt")
    script = f"""
import os, sys, torch
assert not any(os.path.abspath(p or ".") == {ROOT!r} for p in sys.path), sys.path
import cmbert
assert os.path.dirname(os.path.abspath(cmbert.__file__)) == os.getcwd()
mine = {{"errors", "files", "tokens", "model_files", "settings", "runtime", "dataset", "run_files"}} & set(sys.modules)
assert not mine, mine
from transformers import AutoModelForMaskedLM
b = torch.load({str(tmp_path / "batch.pt")!r})
hf = AutoModelForMaskedLM.from_pretrained(".", trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(hf(input_ids=b["ids"], attention_mask=b["mask"]).logits, {str(tmp_path / "logits.pt")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", script], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with torch.no_grad():
        ours, _ = model(ids, mask)
    theirs, valid = torch.load(tmp_path / "logits.pt"), mask.bool()
    assert (ours[valid] - theirs[valid]).abs().max() <= 1e-4


def test_sequence_classification(export):
    model, out = export
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True, num_labels=3).eval()
    ids, mask = padded_batch()
    labels = torch.tensor([0, 2, 1])
    res = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert res.logits.shape == (3, 3) and torch.isfinite(res.loss)
    res.loss.backward()
    assert hf.classifier.weight.grad.abs().sum() > 0
    # the same head weights in cmbert's classifier give the same logits ([CLS] pooling)
    ours = CMBertForSequenceClassification.from_pretrained(out, num_labels=3).eval()
    ours.classifier.load_state_dict(hf.classifier.state_dict())
    with torch.no_grad():
        want, loss = ours(ids, mask, labels)
    assert (res.logits - want).abs().max() <= 1e-4 and res.loss.item() == pytest.approx(loss.item(), abs=1e-4)


ST_SCRIPT = """
import sys, torch
from sentence_transformers import SentenceTransformer
st = SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu")
torch.save(st.encode(sys.argv[3:], convert_to_tensor=True), sys.argv[2])
print(st.max_seq_length, st[1].pooling_mode)
"""


def test_exports_are_sentence_transformers_models(tmp_path, tiny_data):
    """SentenceTransformer(folder, trust_remote_code=True), run as a user runs it (a fresh process,
    outside the repository), loads either export without guessing: no warning, and for RMSNorm no
    load report. Its embeddings are use.py --similarity's to 1e-5 in fp32, on sentences of
    different lengths encoded as one padded batch. What remains for a LayerNorm export: it loads as
    transformers' own ModernBertModel, which lists the masked-LM head it leaves out as unexpected."""
    pytest.importorskip("sentence_transformers")
    import use
    from tokenizers import Tokenizer
    sentences = ["今天天气很好。", "股市大跌。", "他在北京大学学习计算机科学，也喜欢看电影和读小说。" * 3, "好"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs = {}
    for norm in ("rmsnorm", "layernorm"):  # both at once: most of each run is importing
        model, out = perturbed_model(norm), tmp_path / norm
        model.save_hf(out, tiny_data / "tokenizer.json")
        proc = subprocess.Popen([sys.executable, "-c", ST_SCRIPT, str(out), str(tmp_path / f"{norm}.pt"), *sentences],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[norm] = model, out, proc
    for norm, (model, out, proc) in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert stdout.split() == [str(model.cfg.max_seq_len), "mean"]
        said = [line for line in stderr.splitlines() if line.strip() and "Loading weights" not in line]  # a progress bar
        if norm == "rmsnorm":
            assert said == [], stderr
        else:
            flagged = {line.split("|")[0].strip() for line in said if "| UNEXPECTED" in line}
            assert "ModernBertModel LOAD REPORT" in said[0] and flagged == {"head.dense.weight", "head.norm.weight", "decoder.bias"}
            assert not any(word in line.lower() for line in said for word in ("missing", "mismatch", "warn")), stderr
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        want = torch.stack([use.embed(model, tok, s, "sentence", "cpu") for s in sentences])
        got = torch.load(tmp_path / f"{norm}.pt")
        assert got.dtype == torch.float32 and (got - want).abs().max() <= 1e-5
        card = (out / "README.md").read_text(encoding="utf-8")
        assert ('SentenceTransformer("path/to/this/folder", trust_remote_code=True)' in card) == (norm == "rmsnorm")


# ------------------------------------------------------------------------------------------
# from_pretrained loads exactly or refuses with one line naming the file

def edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        cfg.pop(k)
    path.write_text(json.dumps(cfg))


def one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg


def test_from_pretrained_refusals(tmp_path):
    from safetensors.torch import load_file, save_file
    model = perturbed_model("layernorm")

    hf = tmp_path / "hf"
    model.save_hf(hf)
    assert CMBert.from_pretrained(hf).cfg.norm == "layernorm"  # a ModernBERT export is read as layernorm
    with pytest.raises(ValueError) as e:  # ...and not as something its weights were not trained for
        CMBert.from_pretrained(hf, norm="rmsnorm")
    one_line(e, "config.json", "norm")
    edit_config(hf, norm_bias=True)  # a ModernBERT cmbert does not compute exactly
    with pytest.raises(ValueError) as e:
        CMBert.from_pretrained(hf)
    one_line(e, "config.json", "norm_bias")

    native = tmp_path / "native"
    model.save_pretrained(native)
    weights = native / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError) as e:
        CMBert.from_pretrained(native)
    one_line(e, "model.safetensors", "not a readable safetensors")
    sd = load_file(native.parent / "hf" / "model.safetensors")
    for change, words in [(lambda d: d.pop("head.norm.weight"), "no tensor 'head.norm.weight'"),
                          (lambda d: d.update(extra=torch.zeros(2)), "tensor 'extra'"),
                          (lambda d: d.update({"head.dense.weight": torch.zeros(64, 32)}), "head.dense.weight has shape (64, 32)")]:
        bad = dict(sd)
        change(bad)
        save_file(bad, weights)
        with pytest.raises(ValueError) as e:
            CMBert.from_pretrained(native)
        one_line(e, "model.safetensors", words)
    save_file(sd, weights)
    assert torch.equal(CMBert.from_pretrained(native).head.norm.weight, model.head.norm.weight)
    edit_config(native, n_embd=128, n_head=4)  # config and weights disagree
    with pytest.raises(ValueError) as e:
        CMBert.from_pretrained(native)
    one_line(e, "model.safetensors", "shape")

    for content, words in [({"model_type": "bert", "hidden_size": 64}, "model_type 'bert'"),
                           ({"hello": 1}, "not a cmbert config"),
                           ({"n_layer": 4}, "not a cmbert config"),
                           ({**json.loads((tmp_path / "hf" / "config.json").read_text()), "norm_bias": False,
                             "layer_types": ["full_attention"] * 4}, "layer_types")]:
        (native / "config.json").write_text(json.dumps(content))
        with pytest.raises(ValueError) as e:
            CMBert.from_pretrained(native)
        one_line(e, "config.json", words)
    (native / "config.json").write_text("{not json")
    with pytest.raises(ValueError) as e:
        CMBert.from_pretrained(native)
    one_line(e, "config.json", "not valid JSON")
    with pytest.raises(FileNotFoundError) as e:
        CMBert.from_pretrained(tmp_path / "nowhere")
    one_line(e, "config.json")


def test_save_hf_checks_the_tokenizer(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="more than the model's vocab_size"):
        CMBert(small_config(vocab_size=512)).save_hf(tmp_path, tiny_data / "tokenizer.json")
    with pytest.raises(ValueError, match=r"\[MASK\] has id 4, the model's config says 7"):
        CMBert(small_config(mask_id=7)).save_hf(tmp_path, tiny_data / "tokenizer.json")


# ------------------------------------------------------------------------------------------
# use.py on a tiny saved model

def run_use(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "use.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_use_script(tmp_path, tiny_data, capsys):
    from tokenizers import Tokenizer
    model = perturbed_model("rmsnorm")
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((tiny_data / "tokenizer.json").read_bytes())
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))

    r = run_use("--model_dir", tmp_path, "--top_k", 2, "北京是{中国}的首都。", "我们一起去[MASK]吧。")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # {中国}: every token overlapping those two characters is hidden; the output shows what was hidden
    enc = tok.encode("北京是中国的首都。")
    pos = [i for i, (s, e) in enumerate(enc.offsets) if e > s and s < 5 and e > 3]
    hidden = "北京是中国的首都。"[enc.offsets[pos[0]][0]:enc.offsets[pos[-1]][1]]
    assert lines[0] == "北京是中国的首都。".replace(hidden, f"[{hidden}]", 1) and lines[1].startswith(f"  {hidden} -> ")
    assert sum(l.strip().startswith("token ") for l in lines) == len(pos) + 1
    assert lines[-3] == "我们一起去[MASK]吧。" and lines[-2].startswith("  [MASK] -> ")
    ids = torch.tensor(tok.encode("我们一起去[MASK]吧。").ids)
    with torch.no_grad():
        logits = model(ids[None])[0][0, (ids == 4).nonzero()[0, 0]]
    best = tok.decode([int(logits[5:tok.get_vocab_size()].argmax()) + 5])
    assert lines[-2] == f"  [MASK] -> {best}"

    # the rest in-process (a subprocess costs seconds of imports): similarity, then bad input
    import use
    use.main(["--model_dir", str(tmp_path), "--similarity", "今天天气很好。", "股市大跌。"])
    with torch.no_grad():
        e = [model.model(torch.tensor(tok.encode(s).ids)[None])[0].mean(0) for s in ["今天天气很好。", "股市大跌。"]]
    assert capsys.readouterr().out.splitlines()[-1] == f"  [1] vs [2]: {F.cosine_similarity(e[0], e[1], dim=0).item():.4f}"
    for args, words in [(["北京{是中国"], "'{' without a closing '}'"), (["没有面具"], "nothing to fill"),
                        (["{}"], "empty {}"), (["--top_k", "0", "[MASK]"], "--top_k 0"),
                        (["--model_dir", str(tmp_path / "nowhere"), "x"], "config.json: no such file"),
                        (["--export", str(tmp_path), "x"], "the model folder itself")]:
        with pytest.raises(SystemExit) as exc:
            use.main((["--model_dir", str(tmp_path)] if "--model_dir" not in args else []) + args)
        msg = str(exc.value.code)
        assert msg.startswith("use.py: error: ") and words in msg and "\n" not in msg, msg


# ------------------------------------------------------------------------------------------
# command lines

def test_train_accepts_name_space_value_and_help_lists_every_default(capsys):
    import dataclasses
    import train
    cfg, explicit = train.parse_args(["--out_dir", "x y", "--max_steps", "5", "--lr_max=1e-3", "--resume", "True"])
    assert (cfg.out_dir, cfg.max_steps, cfg.lr_max, cfg.resume) == ("x y", 5, 1e-3, True)
    assert explicit == {"out_dir", "max_steps", "lr_max", "resume"}
    with pytest.raises(SystemExit, match="--seed: no value"):
        train.parse_args(["--seed"])
    with pytest.raises(SystemExit, match="--out_dir: no value"):
        train.parse_args(["--out_dir", "--seed=1"])
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(train.TrainConfig):  # every setting, its type and its default value
        line = re.search(rf"^\s+{f.name}: {f.type.__name__} = (.*?)(\s+#.*)?$", text, re.M)
        assert line, f.name
        if f.default is not dataclasses.MISSING and f.name != "compile":  # compile: an expression (CUDA or not)
            assert ast.literal_eval(line.group(1)) == f.default, f.name
    assert "stages: list = field(default_factory=lambda: [" in text and "dict(start=0.75, seq_len=2048" in text


def test_prepare_help_shows_defaults(capsys):
    import prepare
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ["(default: data/default)", "(default: 32000)", "(default: 0.03)", "(default: rjieba)"]:
        assert default in text
