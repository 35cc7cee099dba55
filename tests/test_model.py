"""cmbert.py: exact sliding window, packing, parity with transformers' ModernBERT, sparse MLM, the
multiple-choice head, saving."""
import json

import pytest
import torch
import torch.nn.functional as F

from cmbert import (CMBert, CMBertConfig, CMBertForMultipleChoice, CMBertForSequenceClassification, Layout,
                    attention, config_from_preset, flash_attn_available)


def small_config(**kw):
    return CMBertConfig(**{**dict(vocab_size=512, n_layer=4, n_head=4, n_embd=64, intermediate_size=96,
                                  local_window=16), **kw})


def dense_reference(q, k, v, doc, half):
    """Attention with an explicit T x T mask: same document and, if half is set, |i - j| <= half."""
    T = q.shape[1]
    i = torch.arange(T)
    allowed = doc[:, :, None] == doc[:, None, :]
    if half is not None:
        allowed &= ((i[:, None] - i[None, :]).abs() <= half)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


def layouts(T):
    """The three row arrangements the torch backend has a mask for, as (rows, doc) pairs:
    packed documents with padding, one padded document per row, one full document per row."""
    docs = torch.zeros(2, T, dtype=torch.long)
    docs[1, T // 3:] = 1          # row 1 packs two documents...
    docs[1, T - T // 5:] = -1     # ...and ends with padding
    padded = torch.tensor([[0], [1]]).expand(2, T).clone()
    padded[1, T - T // 2:] = -1
    full = torch.tensor([[0], [1]]).expand(2, T)
    return [("docs", docs), ("padded", padded), ("full", full)]


@pytest.mark.parametrize("T", [1, 7, 64, 100, 128, 203])
@pytest.mark.parametrize("window", [16, 128])
def test_sliding_window_is_exact(T, window):
    """The torch backend equals dense attention with the |i - j| <= w/2 and same-document mask, at
    the edges, across block boundaries, for lengths that are and are not multiples of the block
    size, on the block-wise path (T > 1.5 window), the dense band path and the global path, for
    every mask the layout allows (same document, key padding, none)."""
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, T, 3, 8, dtype=torch.float64) for _ in range(3))
    for rows, doc in layouts(T):
        valid = doc >= 0
        for w in (window, None):
            lay = Layout(pos=None, doc=doc, rows=rows)
            got = attention(q, k, v, lay, w, 0.0)
            want = dense_reference(q, k, v, doc, w // 2 if w else None)
            assert torch.allclose(got[valid], want[valid], atol=1e-10), (rows, w)
            assert torch.isfinite(got).all(), (rows, w)  # padding rows too: no NaN can leak


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_is_exact():
    """FlexAttention (eager here: the same mask function and block mask the compiled kernel uses)
    equals the dense reference for local and global layers over packed documents with padding."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(3)
    T = 203
    q, k, v = (torch.randn(2, T, 3, 8, dtype=torch.float64) for _ in range(3))
    rows, doc = layouts(T)[0]
    lay = Layout(pos=None, doc=doc, backend="flex")
    for w in (16, None):
        got = attention(q, k, v, lay, w, 0.0)
        want = dense_reference(q, k, v, doc, w // 2 if w else None)
        assert torch.allclose(got[doc >= 0], want[doc >= 0], atol=1e-10), w


def test_packed_equals_padded_and_documents_are_isolated():
    torch.manual_seed(0)
    model = CMBert(small_config()).eval()
    lengths = [50, 23, 7, 41]
    docs = [torch.randint(5, 512, (n,)) for n in lengths]
    padded = torch.zeros(len(docs), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, d in enumerate(docs):
        padded[i, :len(d)], mask[i, :len(d)] = d, 1
    cu = torch.tensor([0] + lengths).cumsum(0)
    with torch.no_grad():
        ref, _ = model(padded, mask)
        flat, _ = model(torch.cat(docs), cu_seqlens=cu)
        # the same documents packed into (B, T) = (2, 64) rows whose edges are document boundaries
        filler = torch.randint(5, 512, (7,))
        rows, _ = model(torch.cat([docs[0], docs[2], filler, docs[1], docs[3]]).view(2, 64),
                        cu_seqlens=torch.tensor([0, 50, 57, 64, 87, 128]))
    for i, d in enumerate(docs):
        assert torch.allclose(flat[cu[i]:cu[i + 1]], ref[i, :len(d)], atol=1e-5)
    for got, i in [(rows[0, :50], 0), (rows[0, 50:57], 2), (rows[1, :23], 1), (rows[1, 23:], 3)]:
        assert torch.allclose(got, ref[i, :lengths[i]], atol=1e-5)
    # changing one document changes no other document's outputs
    other = torch.cat(docs).clone()
    other[cu[1]:cu[2]] = torch.randint(5, 512, (lengths[1],))
    with torch.no_grad():
        changed, _ = model(other, cu_seqlens=cu)
    assert torch.equal(changed[:cu[1]], flat[:cu[1]]) and torch.equal(changed[cu[2]:], flat[cu[2]:])
    assert not torch.allclose(changed[cu[1]:cu[2]], flat[cu[1]:cu[2]])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_model_equals_torch_model():
    """The whole model through FlexAttention: same outputs as the torch backend, packed and padded."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(4)
    ref = CMBert(small_config()).eval()
    flex = CMBert(small_config(attn_backend="flex")).eval()
    flex.load_state_dict(ref.state_dict())
    ids = torch.randint(5, 512, (2, 70))
    cu = torch.tensor([0, 30, 70, 75, 140])
    mask = torch.ones_like(ids)
    mask[1, 50:] = 0
    with torch.no_grad():
        assert torch.allclose(flex(ids, cu_seqlens=cu)[0], ref(ids, cu_seqlens=cu)[0], atol=1e-5)
        assert torch.allclose(flex(ids, mask)[0][mask.bool()], ref(ids, mask)[0][mask.bool()], atol=1e-5)


def test_forward_compiles_without_graph_breaks_and_recompiles_a_bounded_number_of_times():
    """torch.compile(fullgraph=True) traces forward + loss in one graph (no graph break, no host
    synchronisation) for padded and packed batches. Dynamo's tracing is what is tested (backend
    'eager'); inductor's code generation takes minutes on a CPU. Packed batches whose number of
    documents differs recompile once (the length of cu_seqlens becomes a dynamic size), then never."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(5)
    model = CMBert(small_config())
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    ids = torch.randint(5, 512, (2, 64))
    labels = torch.where(torch.rand(2, 64) < 0.3, ids, -100)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    calls = [dict(attention_mask=mask), dict(cu_seqlens=torch.tensor([0, 30, 64, 100, 128])),
             dict(cu_seqlens=torch.tensor([0, 10, 64, 128])), dict(cu_seqlens=torch.tensor([0, 10, 20, 64, 70, 128])),
             dict(cu_seqlens=torch.tensor([0, 64, 128]))]
    for kw in calls:
        _, loss = compiled(ids, labels=labels, **kw)
        loss.backward()
        assert torch.allclose(loss, model(ids, labels=labels, **kw)[1], atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 3  # padded, packed, packed with a dynamic document count


def test_cu_seqlens_must_cover_the_batch():
    model = CMBert(small_config())
    with pytest.raises(ValueError, match="ends at 15"):
        model(torch.randint(5, 512, (2, 10)), cu_seqlens=torch.tensor([0, 10, 15]))


def test_packed_rows_must_end_on_document_boundaries():
    model = CMBert(small_config())
    with pytest.raises(ValueError, match="multiple of T"):
        model(torch.randint(5, 512, (2, 10)), cu_seqlens=torch.tensor([0, 15, 20]))


def test_sparse_loss_equals_dense_loss_and_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = CMBert(small_config())
    ids = torch.randint(5, 512, (2, 40))
    labels = torch.where(torch.rand(2, 40) < 0.3, ids, -100)
    logits_sparse, loss = model(ids, labels=labels)
    dense, _ = model(ids)
    assert logits_sparse.shape == ((labels != -100).sum(), 512)
    assert torch.allclose(loss, F.cross_entropy(dense.view(-1, 512), labels.view(-1), ignore_index=-100), atol=1e-6)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_labelled_token_gives_zero_loss_not_nan():
    model = CMBert(small_config())
    logits, loss = model(torch.randint(5, 512, (2, 10)), labels=torch.full((2, 10), -100))
    loss.backward()
    assert logits.shape == (0, 512) and loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() == 0 for p in model.parameters())


def test_multiple_choice_softmax_runs_over_each_question_alone():
    """Questions with 2, 3 and 4 choices in one flat batch: each row of logits holds that
    question's choices and -inf where it has none (probability 0, never picked); changing one
    question's rows changes no other question's logits; the batch gives what each question gives
    alone; the loss is the mean cross-entropy over the questions' own choices."""
    torch.manual_seed(0)
    model = CMBertForMultipleChoice(small_config()).eval()
    n = [2, 3, 4]
    ids = torch.randint(5, 512, (9, 12))
    mask = torch.ones_like(ids)
    mask[2, 7:], mask[8, 5:] = 0, 0  # rows of different lengths, padded
    labels = torch.tensor([1, 0, 3])
    with torch.no_grad():
        logits, loss = model(ids, mask, labels, n_choices=n)
        assert logits.shape == (3, 4) and torch.isinf(logits[0, 2:]).all() and torch.isinf(logits[1, 3])
        assert torch.isfinite(logits[2]).all() and torch.isfinite(logits[0, :2]).all()
        probs = logits.softmax(-1)
        assert torch.allclose(probs.sum(-1), torch.ones(3)) and (probs[0, 2:] == 0).all() and probs[1, 3] == 0
        alone = [model(ids[a:a + k], mask[a:a + k], n_choices=[k])[0][0] for a, k in ((0, 2), (2, 3), (5, 4))]
        for q, k in enumerate(n):
            assert torch.allclose(logits[q, :k], alone[q], atol=1e-5)
        want = sum(F.cross_entropy(alone[q][None], labels[q:q + 1]) for q in range(3)) / 3
        assert loss.item() == pytest.approx(want.item(), abs=1e-5)
        other = ids.clone()
        other[2:5] = torch.randint(5, 512, (3, 12))  # question 1's rows only
        moved = model(other, mask, n_choices=n)[0]
        same = lambda a, b: torch.allclose(a, b, atol=1e-6)  # noqa: E731
        assert same(moved[0], logits[0]) and same(moved[2], logits[2]) and not same(moved[1], logits[1])
    model.train()
    _, loss = model(ids, mask, labels, n_choices=n)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.classifier.weight.shape == (1, 64)  # one linear unit scores each row


def test_save_load_round_trip_and_classifier(tmp_path):
    torch.manual_seed(2)
    model = CMBert(small_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = CMBert.from_pretrained(tmp_path).eval()
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    assert loaded.decoder.weight is loaded.model.embeddings.tok_embeddings.weight  # still tied
    ids = torch.randint(5, 512, (2, 30))
    assert torch.equal(model(ids)[0], loaded(ids)[0])
    assert json.loads((tmp_path / "config.json").read_text())["norm"] == "rmsnorm"

    clf = CMBertForSequenceClassification.from_pretrained(tmp_path, num_labels=3, classifier_pooling="mean")
    assert torch.equal(clf.model.embeddings.tok_embeddings.weight, model.model.embeddings.tok_embeddings.weight)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    logits, loss = clf.eval()(ids, mask, labels=torch.tensor([0, 2]))
    assert logits.shape == (2, 3) and torch.isfinite(loss)
    # mean pooling ignores padding: row 1 alone, unpadded, gives the same logits
    alone, _ = clf(ids[1:, :20])
    assert torch.allclose(alone, logits[1:], atol=1e-5)


def test_compiled_prefixes_are_stripped(tmp_path):
    from safetensors.torch import save_file
    model = CMBert(small_config())
    model.save_pretrained(tmp_path)
    sd = {"_orig_mod." + k: v.contiguous() for k, v in model.state_dict_clean().items()}
    save_file(sd, tmp_path / "model.safetensors")
    loaded = CMBert.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.dense.weight, model.head.dense.weight)


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        CMBert.from_pretrained(tmp_path)


def test_config_validation_and_presets():
    with pytest.raises(AssertionError, match="last layer must be global"):
        CMBertConfig(n_layer=5)
    assert config_from_preset("large").n_layer == 28 and config_from_preset("base").n_embd == 768
    with pytest.raises(ValueError, match="unknown preset"):
        config_from_preset("huge")
    if not flash_attn_available():
        with pytest.raises(RuntimeError, match="flash_attn"):
            CMBert(small_config(attn_backend="flash"))


def test_flops_charge_local_layers_for_their_window_only():
    model = CMBert(config_from_preset("tiny"))
    cfg = model.cfg
    n_global = sum(cfg.is_global(i) for i in range(cfg.n_layer))
    grow = model.flops_per_token(8192) - model.flops_per_token(1024)
    assert grow == pytest.approx(3 * 4 * cfg.n_embd * (8192 - 1024) * n_global)
    assert model.num_params() - model.num_params(embeddings=False) == cfg.vocab_size * cfg.n_embd


@pytest.mark.skipif(not (torch.cuda.is_available() and flash_attn_available()), reason="needs CUDA and flash-attn")
def test_flash_backend_matches_torch_backend():
    torch.manual_seed(0)
    model = CMBert(small_config(n_embd=128, n_head=2)).cuda()
    ids = torch.randint(5, 512, (3, 300), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 200:], mask[2, 31:] = 0, 0
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        model.cfg.attn_backend = "flash"
        a, _ = model(ids, mask)
        model.cfg.attn_backend = "torch"
        b, _ = model(ids, mask)
    valid = mask.bool()
    assert (a[valid].float() - b[valid].float()).abs().max() < 0.1
    assert (a[valid].argmax(-1) == b[valid].argmax(-1)).float().mean() > 0.99
