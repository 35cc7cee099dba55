"""eval_clue.py: readers for every task's official format, encodings, CMRC2018 windows and metric,
C3's multiple-choice rows, an end-to-end fine-tune of a tiny model, and bad input."""
import argparse, json, os, shutil, subprocess, sys

import pytest
import torch
from conftest import ROOT, SENTENCES

from support import clue_data
import eval_clue
from support.errors import Refused
from cmbert import CMBert, CMBertConfig

S = ["蚂蚁借呗等额还款可以换成先息后本吗", "借呗有先息到期还本吗", "花呗支持高铁票支付吗", "为什么友付宝不支持花呗付款",
     "今天股市大涨", "这部电影非常好看", "明天会下雨吗", "如何办理信用卡"]


# SimCLUE toy set: 8 "meanings", each written three ways with disjoint characters, so that before
# fine-tuning the embeddings of two paraphrases are no closer than those of unrelated sentences.
# Train on the paraphrase pairs; dev pairs of the same meaning are label 1, of different ones 0.
_CHARS = sorted(set("".join(SENTENCES)) - set("，。"))
PARA = [tuple("".join(_CHARS[(24 * k + 8 * w + i) % len(_CHARS)] for i in range(5)) for w in range(3)) for k in range(8)]
PARA_TRAIN = [{"sentence1": t[i], "sentence2": t[j], "label": "1"} for t in PARA for i, j in ((0, 1), (1, 2), (0, 2))] + \
             [{"sentence1": PARA[k][0], "sentence2": PARA[(k + 3) % 8][1], "label": "0"} for k in range(8)]
PARA_DEV = [{"sentence1": t[0], "sentence2": t[2], "label": 1} for t in PARA] + \
           [{"sentence1": PARA[k][1], "sentence2": PARA[(k + s) % 8][2], "label": 0} for k in range(8) for s in (1, 2)]


def c3_items(n, long_every=0):
    """C3 items: a passage of two lines and one question of 2, 3 or 4 choices (in turn), whose answer
    is always the same text ("对"), at a varying place; every long_every-th passage is long."""
    items = []
    for k in range(n):
        m = 2 + k % 3
        choices = [S[(k + j) % 8][:3] for j in range(m - 1)]
        choices.insert(k % m, "对")
        lines = [S[k % 8], S[(k + 1) % 8] * (20 if long_every and k % long_every == 0 else 1)]
        items.append([lines, [{"question": "哪个对？", "choice": choices, "answer": "对"}], f"{k}-1"])
    return items


def write_c3(folder, train, dev, names="{}-{}.json"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in (("train", train), ("dev", dev)):
        for g, part in (("d", items[::2]), ("m", items[1::2])):
            (folder / names.format(g, split)).write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")


IDIOMS = [S[k][i:i + 4] for k in range(8) for i in (0, 4)]  # 16 four-character "idioms"


def chid_items(n, long_every=0):
    """FewCLUE's ChID layout: a passage with one #idiom# and 7 candidates whose answer is always
    IDIOMS[0], at a varying place; every long_every-th passage is long on both sides of the blank."""
    items = []
    for k in range(n):
        cands = [IDIOMS[1 + (k + j) % 15] for j in range(6)]
        cands.insert(k % 7, IDIOMS[0])
        side = (lambda t: t * 12) if long_every and k % long_every == 0 else (lambda t: t[:6])  # noqa: E731
        items.append({"id": k, "candidates": cands, "content": side(S[k % 8]) + "#idiom#" + side(S[(k + 3) % 8]),
                      "answer": k % 7})
    return items


def write_clue_chid(folder, split, lines, answers):
    """CLUE's ChID layout: passages with numbered blanks, the answers in <split>_answer.json."""
    write_jsonl(folder / f"{split}.json", lines)
    (folder / f"{split}_answer.json").write_text(json.dumps(answers), encoding="utf-8")


CLUE_CHID = [{"candidates": IDIOMS[:10], "content": [S[0] + "#idiom000000#" + S[1] + "#idiom000001#" + S[2],
                                                     S[3] + "#idiom000002#"]},
             {"candidates": IDIOMS[5:15], "content": ["#idiom000003#" + S[4]]}]
CLUE_CHID_ANSWERS = {"#idiom000000#": 3, "#idiom000001#": 0, "#idiom000002#": 9, "#idiom000003#": 1}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def clue_dir(tmp_path_factory):
    """Every task in its official layout; labels as strings in some files and integers in others."""
    d = tmp_path_factory.mktemp("clue")
    pairs = [{"sentence1": S[i % 8], "sentence2": S[(i * 3) % 8], "label": str(i % 2)} for i in range(40)]
    write_jsonl(d / "afqmc_public" / "train.json", pairs)
    write_jsonl(d / "afqmc_public" / "dev.json", [dict(p, label=int(p["label"])) for p in pairs[:12]])
    news = [{"sentence": S[i % 8], "label": str(100 + (i % 3) * 2), "label_desc": "x", "keywords": ""} for i in range(30)]
    write_jsonl(d / "tnews_public" / "train.json", news)
    write_jsonl(d / "tnews_public" / "dev.json", news[:9])
    write_jsonl(d / "iflytek_public" / "train.json", [{"sentence": S[i % 8], "label": i % 4, "label_des": "y"} for i in range(20)])
    write_jsonl(d / "iflytek_public" / "dev.json", [{"sentence": S[i % 8], "label": str(i % 4), "label_des": "y"} for i in range(8)])
    nli = [{"sentence1": S[i % 8], "sentence2": S[(i + 1) % 8], "label": ["entailment", "neutral", "contradiction", "-"][i % 4]}
           for i in range(24)]
    write_jsonl(d / "ocnli_public" / "train.50k.json", nli)
    write_jsonl(d / "ocnli_public" / "dev.json", nli[:8])
    write_jsonl(d / "cmnli_public" / "train.json", nli)
    write_jsonl(d / "cmnli_public" / "dev.json", nli[:8])
    wsc = [{"text": "小明把书给了小红，因为她想看。", "target": {"span1_text": "小红", "span1_index": 6,
                                                          "span2_text": "她", "span2_index": 11},
            "label": ["true", "false"][i % 2], "idx": i} for i in range(10)]
    write_jsonl(d / "cluewsc2020_public" / "train.json", wsc)
    write_jsonl(d / "cluewsc2020_public" / "dev.json", wsc[:4])
    csl = [{"id": i, "abst": S[i % 8] * 3, "keyword": [S[i % 8][:2], S[(i + 1) % 8][:2]], "label": str(i % 2)} for i in range(16)]
    write_jsonl(d / "csl_public" / "train.json", csl)
    write_jsonl(d / "csl_public" / "dev.json", csl[:6])
    ctx = "中国的首都是北京。北京有很多名胜古迹，例如故宫和长城。" * 3
    cmrc = {"version": "v1.0", "data": [{"id": "d1", "paragraphs": [{"id": "p1", "context": ctx, "qas": [
        {"id": "q1", "question": "中国的首都是哪里？", "answers": [{"text": "北京", "answer_start": 6}]},
        {"id": "q2", "question": "北京有什么名胜古迹？", "answers": [{"text": "故宫和长城", "answer_start": 22}]}]}]}]}
    (d / "cmrc2018_train.json").write_text(json.dumps(cmrc, ensure_ascii=False), encoding="utf-8")
    (d / "cmrc2018_dev.json").write_text(json.dumps(cmrc, ensure_ascii=False), encoding="utf-8")
    write_jsonl(d / "simclue_public" / "train.json", PARA_TRAIN)
    write_jsonl(d / "simclue_public" / "dev.json", PARA_DEV)
    write_jsonl(d / "simclue_public" / "train_rank.json",
                [{"query": a, "title": b, "neg_title": PARA[(i + 1) % len(PARA)][0]} for i, (a, b, _) in enumerate(PARA)])
    write_c3(d / "c3_public", c3_items(12), c3_items(6))
    write_jsonl(d / "chid_public" / "train.json", chid_items(14))
    write_jsonl(d / "chid_public" / "dev.json", chid_items(7))
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("model")
    CMBert(CMBertConfig(vocab_size=1024, n_layer=4, n_head=2, n_embd=32, intermediate_size=48)).save_pretrained(d)
    (d / "tokenizer.json").write_bytes((tiny_data / "tokenizer.json").read_bytes())
    return d


def test_readers_for_every_task(clue_dir):
    ex, dropped = clue_data.read_classification("pair", str(clue_dir / "ocnli_public" / "train.50k.json"))
    assert dropped == 6 and len(ex) == 18 and {e[2] for e in ex} == {"entailment", "neutral", "contradiction"}
    ex, _ = clue_data.read_classification("single", str(clue_dir / "iflytek_public" / "train.json"))
    assert ex[1][2] == "1" and ex[1][1] is None  # integer labels read as strings
    ex, _ = clue_data.read_classification("csl", str(clue_dir / "csl_public" / "train.json"))
    assert ex[0][0] == S[0][:2] + "、" + S[1][:2] and ex[0][1] == S[0] * 3  # keywords joined, paired with the abstract
    ex, _ = clue_data.read_classification("wsc", str(clue_dir / "cluewsc2020_public" / "train.json"))
    assert ex[0][0] == "小明把书给了[小红]，因为<她>想看。"
    qa = clue_data.read_cmrc(str(clue_dir / "cmrc2018_dev.json"))
    assert len(qa) == 2 and qa[0]["answers"] == [("北京", 6)]
    assert qa[1]["answers"] == [("故宫和长城", 21)], "an answer_start that is off by one is moved to the answer"
    c3 = clue_data.read_c3(str(clue_dir / "c3_public" / "m-dev.json"))
    assert c3[0]["passage"] == S[1] + S[2] and c3[0]["choices"] == [S[1][:3], "对", S[2][:3]] and c3[0]["answer"] == 1
    assert [len(q["choices"]) for q in c3] == [3, 2, 4] and c3[2]["passage_id"] == (str(clue_dir / "c3_public" / "m-dev.json"), 2)
    pairs = clue_data.read_simclue_pairs(str(clue_dir / "simclue_public" / "dev.json"))
    assert pairs[0] == (PARA[0][0], PARA[0][2], 1, 1) and sum(p[2] for p in pairs) == 8
    for task in eval_clue.TASKS:
        assert all(os.path.exists(p) for p in clue_data.task_files(eval_clue.TASKS, task, str(clue_dir), None).values())


def test_pair_encoding(model_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    enc = tok.encode("今天股市大涨", "明天会下雨吗")
    assert enc.ids[0] == 2 and enc.ids.count(3) == 2 and enc.type_ids[-1] == 1


def test_wsc_marks_spans_in_either_order(tmp_path):
    row = {"text": "她说小红想看书。", "target": {"span1_text": "小红", "span1_index": 2, "span2_text": "她", "span2_index": 0},
           "label": "false", "idx": 0}
    assert clue_data.mark_wsc(row, "x", 1) == "<她>说[小红]想看书。"
    row["target"]["span1_index"] = 3
    with pytest.raises(Refused, match="x: line 1: span1_text '小红' is not at span1_index 3"):
        clue_data.mark_wsc(row, "x", 1)


def test_batch_order_is_a_shuffled_partition_of_similar_lengths():
    lengths = [(i * 37) % 101 for i in range(1000)]
    batches = eval_clue.batch_order(lengths, 8, seed=0, epoch=0, group=10)
    assert sorted(int(j) for b in batches for j in b) == list(range(1000))  # every example once per epoch
    assert all(len(b) == 8 for b in batches)
    spread = sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches) / len(batches)
    assert spread < 10, "batches group similar lengths (random batches of 8 would spread about 80)"
    again = eval_clue.batch_order(lengths, 8, seed=0, epoch=0, group=10)
    assert all(list(a) == list(b) for a, b in zip(batches, again))  # the seed fixes the order
    assert [list(b) for b in eval_clue.batch_order(lengths, 8, seed=0, epoch=1, group=10)] != [list(b) for b in batches]


def test_cmrc_windows_map_answers_back_to_characters(model_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    context = "甲" * 30 + "北京是中国的首都" + "乙" * 60
    ex = dict(context=context, question="首都是哪里", answers=[("北京", 30)])
    windows = eval_clue.cmrc_windows(tok, ex, max_len=40, stride=16)
    assert len(windows) > 2 and all(len(w["ids"]) <= 40 for w in windows)
    found = [w for w in windows if w["start"] > 0]
    assert found, "the answer is inside some window"
    for w in found:  # the labelled tokens spell the answer, in characters of the original context
        a = w["offsets"][w["start"] - w["first"]][0]
        b = w["offsets"][w["end"] - w["first"]][1]
        assert context[a:b] == "北京"
    assert any(w["start"] == w["end"] == 0 for w in windows), "windows without the answer point at [CLS]"
    # the best span under hand-made logits maps back to the same characters
    w = found[0]
    start, end = torch.full((len(w["ids"]),), -5.0), torch.full((len(w["ids"]),), -5.0)
    start[w["start"]], end[w["end"]] = 5.0, 5.0
    _, a, b = eval_clue.best_span(start, end, w)
    assert context[a:b] == "北京"


def test_official_cmrc_metric_where_a_naive_port_differs():
    seg, em, f1 = clue_data.cmrc_segments, clue_data.cmrc_em, clue_data.cmrc_f1
    assert seg("Apple公司 2020年") == ["apple", "公", "司", "2020", "年"]
    assert seg("3.5亿") == ["3.5", "亿"]  # NLTK keeps a decimal number whole
    assert seg("(1998)") == ["(", "1998", ")"] and em("(1998)", ["1998"]) == 0.0  # ASCII brackets are not in the list
    assert f1("(1998)", ["1998"]) == pytest.approx(0.5)
    assert seg("（1998）") == ["1998"] and em("（1998）", ["1998"]) == 1.0  # full-width brackets are
    assert seg("iPhone 12") == ["iphone", "12"] and em("iPhone 12", ["iphone12"]) == 0.0  # inner spaces count
    assert em(" 北京。", ["北京"]) == 1.0 and em("北京 。", ["北京"]) == 0.0  # strip first, then remove punctuation
    assert em("北京…", ["北京"]) == 0.0  # the list's "……" never matches a single "…"
    assert seg("COVID-19疫苗") == ["covid19", "疫", "苗"] and seg("abc，def") == ["abcdef"]  # removed, run not ended
    assert seg("50%的人") == ["50", "%", "的", "人"] and seg("U.S.") == ["u.s", "."] and seg("1,000") == ["1,000"]
    assert seg("二〇〇八年") == ["二", "〇〇", "八", "年"]  # U+3007 lies outside U+4E00..U+9FA5
    assert f1("北京上海", ["上海北京"]) == pytest.approx(0.5)  # longest common substring, not a bag of tokens
    assert em("在北京", ["北京"]) == 0.0 and f1("在北京", ["北京"]) == pytest.approx(0.8)
    assert em("上海", ["北京", "上海"]) == 1.0 and f1("上海", ["北京", "上海"]) == 1.0 and f1("", ["北京"]) == 0.0


def test_correlations_on_known_cases():
    assert eval_clue.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert eval_clue.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert eval_clue.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert list(clue_data.average_ranks([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]  # ties share their mean rank
    assert eval_clue.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / 95 ** 0.5)  # 0.8207826816681233
    assert eval_clue.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert eval_clue.spearman([0.9, 0.1, 0.8, 0.3], [1, 0, 0, 1]) == pytest.approx(0.4472135955)


def test_seeds_aggregate_and_table():
    per_seed = [dict(seed=s, final=f, best=f + 0.1, per_epoch=[[f]]) for s, f in zip((1, 2, 3), (0.5, 0.6, 0.7))]
    r = eval_clue.aggregate(per_seed, "acc")
    assert r["final"] == pytest.approx(0.6) and r["final_std"] == pytest.approx(0.1) and r["seeds"] == [1, 2, 3]
    r.update(baseline=0.55, n_train=100, n_dev=300, notes="", seconds=3.0)
    one = dict(eval_clue.aggregate(per_seed[:1], "acc"), baseline=0.55, n_train=100, n_dev=300, notes="", seconds=1.0)
    table = eval_clue.markdown_table({"cluewsc2020": r, "csl": one}, argparse.Namespace(model_dir="m", init="random", seed=1))
    assert "| csl | acc | 1 | 50.00 |" in table and "warning: csl has 300 dev rows and ran with one seed" in table
    assert "warning: cluewsc2020" not in table
    # every task ran one epoch: no best-epoch column (it would repeat the final one)
    assert "best epoch" not in table and "| task | metric | seeds | dev | baseline | per seed |" in table
    assert "| cluewsc2020 | acc | 3 | 60.00 ± 10.00 | majority class 55.00 | 50.00, 60.00, 70.00 |" in table
    two = dict(eval_clue.aggregate([dict(s, per_epoch=[[0.1], [s["final"]]]) for s in per_seed], "acc"),
               baseline=0.55, n_train=100, n_dev=300, notes="", seconds=3.0)
    table = eval_clue.markdown_table({"tnews": two, "csl": one}, argparse.Namespace(model_dir="m", init="random", seed=1))
    assert "| dev (final epoch) | dev (best epoch) |" in table
    assert "| tnews | acc | 3 | 60.00 ± 10.00 | 70.00 ± 10.00 | majority class 55.00 |" in table
    assert "| csl | acc | 1 | 50.00 | – | majority class 55.00 |" in table  # one epoch: no best of its own


def run_eval(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_clue.py"), "--progress", "False", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_end_to_end_two_tasks_and_random_init(tmp_path, clue_dir, model_dir):
    out = tmp_path / "results.json"
    r = run_eval("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "afqmc,cmrc2018", "--epochs", "2",
                 "--batch_size", "8", "--lr", "1e-3", "--max_len", "64", "--doc_stride", "32", "--out", out,
                 "--save", tmp_path / "saved")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"afqmc", "cmrc2018"}
    afqmc = res["tasks"]["afqmc"]
    assert 0 <= afqmc["final"] <= 1 and afqmc["n_train"] == 40 and afqmc["n_dev"] == 12
    assert afqmc["seeds"] == [42] and len(afqmc["per_seed"][0]["per_epoch"]) == 2
    assert afqmc["baseline"] == 0.5 and res["tasks"]["cmrc2018"]["baseline"] is None
    assert 0 <= res["tasks"]["cmrc2018"]["dev_answers_off_token_edges"] <= 1
    assert "| afqmc | acc | 1 |" in r.stdout and "| cmrc2018 | F1 / EM | 1 |" in r.stdout
    saved = tmp_path / "saved" / "cmrc2018" / "seed42"
    assert json.loads((saved / "task.json").read_text())["model_class"] == "CMBertForSpans"
    assert eval_clue.CMBertForSpans.from_pretrained(str(saved)) is not None
    r = run_eval("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "all", "--epochs", "1", "--init", "random",
                 "--max_len", "64", "--doc_stride", "32", "--seeds", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads((model_dir / "results_clue.json").read_text())
    assert res["init"] == "random" and set(res["tasks"]) == set(eval_clue.TASKS)
    assert "dropped 6 train / 2 dev" in res["tasks"]["ocnli"]["notes"]
    assert "warning: cluewsc2020 has 4 dev rows and ran with one seed" in r.stdout


def evaluate(*args):
    """eval_clue in this process (faster than a subprocess); a refusal comes back as its message."""
    try:
        return eval_clue.main(["--progress", "False", *map(str, args)])
    except SystemExit as e:
        return str(e.code)


def test_fine_tuning_learns(tmp_path, model_dir):
    """The loop really trains: a tiny random model memorises which of 8 sentences has which of 3
    labels (dev = train here), far above the majority class."""
    rows = [{"sentence": S[i % 8], "label": str(100 + (i % 8) % 3), "label_desc": "x", "keywords": ""} for i in range(48)]
    write_jsonl(tmp_path / "tnews_public" / "train.json", rows)
    write_jsonl(tmp_path / "tnews_public" / "dev.json", rows[:8])
    res = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "tnews", "--init", "random", "--epochs",
                   "15", "--lr", "3e-3", "--batch_size", "8", "--out", tmp_path / "r.json")["tnews"]
    assert res["baseline"] == 3 / 8 and res["final"] >= 7 / 8, res["per_seed"]


def test_simclue_contrastive_fine_tuning_separates_paraphrases(tmp_path, clue_dir, model_dir):
    """InfoNCE on the toy paraphrase set: Spearman of cosine vs label rises well above its value
    before fine-tuning; the fine-tuned encoder is saved as a model directory."""
    res = evaluate("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "simclue", "--init", "random",
                   "--epochs", "4", "--lr", "3e-3", "--batch_size", "8", "--out", tmp_path / "r.json",
                   "--save", tmp_path / "saved")["simclue"]
    before, after = res["baseline"][0], res["final"]
    assert res["n_train"] == 24 + 8 and res["n_dev"] == 24 and "8 with a hard negative" in res["notes"]
    assert after > before + 0.3 and after > 0.6, (before, res["per_seed"])
    saved = res["per_seed"][0]["saved"]
    assert json.loads(open(os.path.join(saved, "task.json")).read())["model_class"] == "CMBert"
    encoder = CMBert.from_pretrained(saved).model  # the export that save_hf writes, which cmbert reads back
    # ...and a sentence-transformers model (test_hf.py loads such folders): the encoder, then mean pooling
    modules = json.loads(open(os.path.join(saved, "modules.json")).read())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    assert json.loads(open(os.path.join(saved, "1_Pooling", "config.json")).read())["pooling_mode_mean_tokens"]
    assert json.loads(open(os.path.join(saved, "sentence_bert_config.json")).read())["max_seq_length"] == \
        encoder.cfg.max_seq_len


def test_info_nce_prefers_the_matching_positive():
    a = torch.eye(4)
    assert eval_clue.info_nce(a, a.clone()) < eval_clue.info_nce(a, a.roll(1, 0))
    hard = eval_clue.info_nce(a, a.clone(), negative=a[:1].clone() * 0.99 + 0.01)
    assert hard > eval_clue.info_nce(a, a.clone())  # a near-duplicate negative makes it harder


def test_saved_classifier_reloads_with_the_same_logits(tmp_path, model_dir):
    from cmbert import CMBertForSequenceClassification
    args = argparse.Namespace(save=str(tmp_path), init="pretrained")
    model = CMBertForSequenceClassification.from_pretrained(str(model_dir), num_labels=3).eval()
    folder = eval_clue.save_model(model, "tnews", {"labels": ["100", "102", "104"]}, 7, args, str(model_dir / "tokenizer.json"))
    meta = json.loads(open(os.path.join(folder, "task.json")).read())
    again = CMBertForSequenceClassification.from_pretrained(folder, num_labels=len(meta["labels"])).eval()
    ids = torch.randint(5, 1000, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    assert torch.equal(model(ids, mask)[0], again(ids, mask)[0]) and meta["labels"] == ["100", "102", "104"]
    assert os.path.exists(os.path.join(folder, "tokenizer.json")) and os.listdir(tmp_path / "tnews") == ["seed7"]
    eval_clue.save_model(again, "tnews", {"labels": ["100", "102", "104"]}, 7, args, str(model_dir / "tokenizer.json"))
    assert os.listdir(tmp_path / "tnews") == ["seed7"]  # replaced, no temporary left behind


def test_c3_rows_keep_question_and_choice_and_count_cut_passages(model_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    qs = [dict(passage=S[0] * 10, question="哪个对？", choices=["对", S[1][:3]], answer=0, passage_id=("f", 0)),
          dict(passage=S[0] * 10, question="还有呢？", choices=["不", "对", S[2][:3]], answer=1, passage_id=("f", 0)),
          dict(passage=S[3], question="哪个对？", choices=["对", "错"], answer=0, passage_id=("f", 1))]
    rows, first, n, cut, capped = eval_clue.choice_rows(tok, qs, 64)
    assert list(first) == [0, 2, 5] and list(n) == [2, 3, 2] and len(rows) == 7
    assert cut == {("f", 0)} and capped == 0  # the long passage once, though four of its rows were cut
    enc = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    k = 0
    for q in qs:
        for c in q["choices"]:
            ids = list(rows.ids[k, :rows.lengths[k]])
            tail = [3] + enc(q["question"]) + [3] + enc(c) + [3]
            assert len(ids) <= 64 and ids[0] == 2 and ids[-len(tail):] == tail  # question and choice always whole
            assert ids[1:-len(tail)] == enc(q["passage"])[:len(ids) - 1 - len(tail)]  # the passage, cut at its end
            k += 1
    assert rows.lengths[5] < 64  # the short passage is whole
    rows, *_, capped = eval_clue.choice_rows(tok, [dict(qs[2], question=S[4] * 4)], 16)
    assert capped == 2 and rows.lengths.max() <= 16  # a question longer than a quarter of max_len is cut too


def test_c3_fine_tunes_scores_against_chance_and_reloads_exactly(tmp_path, model_dir):
    """Questions of 2, 3 and 4 choices whose answer is always "对": the loop learns it; chance is the
    mean of 1 / number of choices over the dev questions; the saved model gives the same score."""
    write_c3(tmp_path / "c3_public", c3_items(24, long_every=5), c3_items(9))
    res = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "c3", "--init", "random", "--epochs", "6",
                   "--lr", "3e-3", "--batch_size", "4", "--max_len", "128", "--dtype", "float32", "--out",
                   tmp_path / "r.json", "--save", tmp_path / "saved")["c3"]
    assert res["baseline"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3) and res["baseline_name"] == "chance"
    assert res["final"] == 1.0 and res["n_train"] == 24 and res["n_dev"] == 9, res["per_seed"]
    assert res["passages_cut"]["train"] == pytest.approx(5 / 24) and res["passages_cut"]["dev"] == 0
    assert "5 of 24 train (20.8%)" in res["notes"]
    saved = res["per_seed"][0]["saved"]
    assert json.loads(open(os.path.join(saved, "task.json")).read())["model_class"] == "CMBertForMultipleChoice"
    from cmbert import CMBertForMultipleChoice
    from tokenizers import Tokenizer
    args = argparse.Namespace(epochs=None, lr=None, batch_size=None, max_len=128, seeds=None, max_train_samples=None,
                              seed=42, device="cpu", autocast=torch.autocast("cpu", enabled=False), progress=False)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(16)  # as another task's loader may leave the shared tokenizer
    data = eval_clue.load_choice("c3", clue_data.task_files(eval_clue.TASKS, "c3", str(tmp_path), None), tok, args)
    assert data["report"]["passages_cut"] == res["passages_cut"]
    again = CMBertForMultipleChoice.from_pretrained(saved).eval()
    assert eval_clue.choice_accuracy(again, data, args)[0] == res["final"]
    text = (tmp_path / "r.json").read_text()
    assert "| c3 | acc | 1 | 100.00 | 100.00 | chance 36.11 |" in json.loads(text)["table"]


def test_c3_release_names_and_bad_rows(tmp_path, model_dir):
    write_c3(tmp_path / "release", c3_items(6), c3_items(3), names="c3-{}-{}.json")
    paths = clue_data.task_files(eval_clue.TASKS, "c3", str(tmp_path), str(tmp_path / "release"))
    assert paths["m-dev"] == str(tmp_path / "release" / "c3-m-dev.json")
    shutil.copytree(tmp_path / "release", tmp_path / "flat")  # the release's files right in --data_dir
    assert clue_data.task_files(eval_clue.TASKS, "c3", str(tmp_path / "flat"), None)["d-train"] == str(tmp_path / "flat" / "c3-d-train.json")
    good = c3_items(3)
    for k, (change, words) in enumerate([
            (lambda q: q.update(answer="错"), "item 1 (1-1) question 0: answer '错' is not among the choices"),
            (lambda q: q.update(choice=[]), "item 1 (1-1) question 0: 0 choices; a question needs at least 2"),
            (lambda q: q.pop("answer"), "item 1 (1-1) question 0: not an object with question, choice and answer")]):
        bad = json.loads(json.dumps(good))
        change(bad[1][1][0])
        d = tmp_path / str(k)
        write_c3(d / "c3_public", good, good)
        (d / "c3_public" / "m-dev.json").write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
        msg = evaluate("--model_dir", model_dir, "--data_dir", d, "--tasks", "c3")
        assert msg == f"eval_clue.py: error: {d / 'c3_public' / 'm-dev.json'}: {words}", msg
    (d / "c3_public" / "d-train.json").write_text('{"data": []}', encoding="utf-8")
    assert "d-train.json: not a C3 file" in evaluate("--model_dir", model_dir, "--data_dir", d, "--tasks", "c3")


def test_clue_layout_of_cmrc2018_is_found(tmp_path, clue_dir):
    (tmp_path / "cmrc2018_public").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "cmrc2018_public" / f"{split}.json").write_bytes((clue_dir / f"cmrc2018_{split}.json").read_bytes())
    paths = clue_data.task_files(eval_clue.TASKS, "cmrc2018", str(tmp_path), None)
    assert paths["dev"] == str(tmp_path / "cmrc2018_public" / "dev.json")
    args = argparse.Namespace(tasks="all", path=[], data_dir=str(tmp_path))
    assert clue_data.find_tasks(eval_clue.TASKS, args)[0] == ["cmrc2018"]


@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "argument --epochs: 0: must be >= 1"), ("--max_train_samples", "0", "must be >= 1"),
    ("--batch_size", "0", "argument --batch_size: 0: must be >= 1"), ("--lr", "0", "argument --lr: 0: must be > 0"),
    ("--lr", "-1e-5", "must be > 0"), ("--lr", "nan", "must be > 0"), ("--max_len", "8", "must be >= 16"),
    ("--seeds", "0", "argument --seeds: 0: must be >= 1"), ("--dropout", "1.5", "must be in [0, 0.99]"),
    ("--temperature", "0", "must be > 0"), ("--doc_stride", "0", "must be >= 1"), ("--epochs", "two", "not an integer"),
    ("--seed", "-1", "must be >= 0"), ("--progress", "yes", "invalid choice")])
def test_bad_settings_are_refused_with_the_allowed_range(flag, value, message, capsys):
    with pytest.raises(SystemExit) as e:
        eval_clue.parse_args([f"{flag}={value}"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_settings_checked_against_the_model_before_any_work(clue_dir, model_dir):
    assert "exceeds the model's max_seq_len" in evaluate("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks",
                                                         "afqmc", "--max_len", "100000")
    assert "--doc_stride 128: must be in [1, 32]" in evaluate("--model_dir", model_dir, "--data_dir", clue_dir,
                                                              "--tasks", "cmrc2018", "--max_len", "64")


def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, model_dir):
    cases = [("afqmc_public", {"sentence1": "好", "label": "0"}, "no field 'sentence2'"),
             ("afqmc_public", {"sentence1": "好", "sentence2": None, "label": "0"}, "field 'sentence2' is None, not text"),
             ("tnews_public", ["not", "an", "object"], "not a JSON object"),
             ("tnews_public", {"sentence": "好", "label": [1]}, "label [1] is neither text nor an integer"),
             ("simclue_public", {"sentence1": "好", "sentence2": "坏", "label": "2"}, "label '2' is not 0 or 1"),
             ("cluewsc2020_public", {"text": "她好", "target": {"span1_text": "她", "span1_index": "0", "span2_text": "好",
                                                              "span2_index": 1}, "label": "true"}, "is '0', not an integer")]
    task = {"afqmc_public": "afqmc", "tnews_public": "tnews", "simclue_public": "simclue", "cluewsc2020_public": "cluewsc2020"}
    good = {"afqmc_public": {"sentence1": "好", "sentence2": "坏", "label": "1"}, "tnews_public": {"sentence": "好", "label": "100"},
            "simclue_public": {"sentence1": "好", "sentence2": "坏", "label": "1"},
            "cluewsc2020_public": {"text": "她好", "target": {"span1_text": "她", "span1_index": 0, "span2_text": "好",
                                                            "span2_index": 1}, "label": "true"}}
    for k, (folder, row, message) in enumerate(cases):
        d = tmp_path / str(k)
        write_jsonl(d / folder / "train.json", [good[folder], row])
        write_jsonl(d / folder / "dev.json", [good[folder], dict(good[folder], label="0" if folder != "cluewsc2020_public"
                                                                   else "true")])
        msg = evaluate("--model_dir", model_dir, "--data_dir", d, "--tasks", task[folder])
        assert msg.startswith(f"eval_clue.py: error: {d / folder / 'train.json'}: line 2: ") and message in msg, msg
        assert "\n" not in msg
    (d / "cluewsc2020_public" / "train.json").write_bytes(b'{"text": "\xff"}\n')
    assert "train.json: line 1: not UTF-8" in evaluate("--model_dir", model_dir, "--data_dir", d, "--tasks", "cluewsc2020")


def test_label_set_from_the_whole_training_file_and_empty_dev(tmp_path, model_dir):
    rows = [{"sentence": S[i % 8], "label": "100"} for i in range(30)] + [{"sentence": S[1], "label": "116"}]
    write_jsonl(tmp_path / "tnews_public" / "train.json", rows)
    write_jsonl(tmp_path / "tnews_public" / "dev.json", [{"sentence": S[1], "label": "116"}, rows[0]])
    res = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "tnews", "--init", "random",
                   "--max_train_samples", "4", "--epochs", "1", "--out", tmp_path / "r.json")
    assert res["tnews"]["labels"] == 2 and res["tnews"]["n_train"] == 4  # "116" is known though the subset lacks it
    write_jsonl(tmp_path / "tnews_public" / "dev.json", [])
    assert "dev.json: no labelled rows" in evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "tnews")


def test_every_task_validated_first_and_results_written_after_each(tmp_path, clue_dir, model_dir, monkeypatch):
    bad = tmp_path / "bad"
    shutil.copytree(clue_dir / "afqmc_public", bad / "afqmc_public")
    write_jsonl(bad / "tnews_public" / "train.json", [{"sentence": "好", "label": "100"}])
    (bad / "tnews_public" / "dev.json").write_text('{"sentence": "好", "label": "100"}\n{oops\n', encoding="utf-8")
    out = tmp_path / "r.json"
    msg = evaluate("--model_dir", model_dir, "--data_dir", bad, "--tasks", "afqmc,tnews", "--out", out)
    assert "tnews_public/dev.json: line 2: invalid JSON" in msg and not out.exists()  # nothing trained
    real = eval_clue.CLASSIFY.run

    def failing(task, *a):
        if task == "tnews":
            raise Refused("tnews: simulated failure")
        return real(task, *a)
    monkeypatch.setattr(eval_clue.CLASSIFY, "run", failing)
    msg = evaluate("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "afqmc,tnews", "--epochs", "1", "--out", out)
    assert "simulated failure" in msg and set(json.loads(out.read_text())["tasks"]) == {"afqmc"}  # afqmc kept


def test_bad_inputs(tmp_path, clue_dir, model_dir):
    msg = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "afqmc")
    assert "afqmc: missing" in msg and str(tmp_path / "afqmc_public" / "train.json") in msg
    bad = tmp_path / "bad"
    write_jsonl(bad / "tnews_public" / "train.json", [{"sentence": "好", "label": "100"}, {"sentence": "坏", "label": "101"}])
    write_jsonl(bad / "tnews_public" / "dev.json", [{"sentence": "好", "label": "100"}, {"sentence": "坏", "label": "117"}])
    assert "dev.json: line 2: label '117' does not occur" in evaluate("--model_dir", model_dir, "--data_dir", bad, "--tasks", "tnews")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert "no config.json" in evaluate("--model_dir", empty, "--data_dir", clue_dir, "--tasks", "afqmc")
    other = tmp_path / "other_model"
    CMBert(CMBertConfig(vocab_size=512, n_layer=1, n_head=2, n_embd=32, intermediate_size=48)).save_pretrained(other)
    (other / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    assert "does not match the model" in evaluate("--model_dir", other, "--data_dir", clue_dir, "--tasks", "afqmc")


def test_a_tokenizer_from_elsewhere_is_refused(tmp_path, clue_dir, model_dir):
    foreign = tmp_path / "tokenizer.json"
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok["normalizer"] = None  # same vocabulary and special ids, another file
    foreign.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    msg = evaluate("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "afqmc", "--tokenizer", foreign)
    assert f"{foreign} is not the tokenizer of {model_dir}" in msg
    recorded = tmp_path / "model"
    shutil.copytree(model_dir, recorded)
    (recorded / "tokenizer.json").unlink()
    cfg = json.loads((recorded / "config.json").read_text())
    (recorded / "config.json").write_text(json.dumps(dict(cfg, tokenizer_sha256="0" * 64)))
    msg = evaluate("--model_dir", recorded, "--data_dir", clue_dir, "--tasks", "afqmc", "--tokenizer", model_dir / "tokenizer.json")
    assert "is not the tokenizer_sha256 000000000000" in msg


def test_faults_are_one_line(tmp_path, clue_dir, model_dir):
    """A full disk under --out, a device this machine lacks and bad numbers: one line each, no
    traceback and no usage block."""
    import resource
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval_clue.py"), "--progress", "False", "--model_dir",
                        str(model_dir), "--data_dir", str(clue_dir), "--tasks", "afqmc", "--epochs", "1", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and f"{out}: File too large" in lines[0], r.stderr[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    cases = [["--epochs", "0"], ["--max_train_samples", "-5"], ["--batch_size", "0"]]
    if not torch.cuda.is_available():
        cases.append(["--device", "cuda"])
    for args in cases:
        r = run_eval("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "afqmc", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("eval_clue.py: error: argument"), r.stderr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fine_tuning_prints_no_warning(tmp_path, clue_dir, model_dir, dtype):
    r = run_eval("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "tnews,simclue,chid", "--epochs", "1",
                 "--seeds", "1", "--dtype", dtype, "--out", tmp_path / "r.json")
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ------------------------------------------------------------------------------------------
# ChID: both layouts, the context cut around the blank, zero-shot scoring by the masked LM

def test_chid_reads_both_layouts(tmp_path, clue_dir):
    few = clue_data.read_chid(str(clue_dir / "chid_public" / "dev.json"))
    assert len(few) == 7 and few[2]["answer"] == 2 and few[2]["choices"][2] == IDIOMS[0]
    assert few[0]["left"] == S[0][:6] and few[0]["right"] == S[3][:6] and few[0]["where"].endswith("dev.json: line 1")
    write_clue_chid(tmp_path, "dev", CLUE_CHID, CLUE_CHID_ANSWERS)
    items = clue_data.read_chid(str(tmp_path / "dev.json"))
    assert len(items) == 4  # a blank is an item: two in the first passage, one in each of the others
    first, second = items[:2]
    # the other blank of the passage is left as the neutral #idiom#, never as its answer
    assert first["left"] == S[0] and first["right"] == S[1] + "#idiom#" + S[2] and first["answer"] == 3
    assert second["left"] == S[0] + "#idiom#" + S[1] and second["right"] == S[2] and second["answer"] == 0
    assert items[2]["answer"] == 9 and items[3]["choices"] == IDIOMS[5:15] and items[3]["left"] == ""
    assert items[1]["where"] == f"{tmp_path / 'dev.json'}: line 1, blank #idiom000001#"


@pytest.mark.parametrize("layout,change,words", [
    ("few", lambda o, a: o.update(answer=7), "line 2: answer 7 is not the index of one of the 7 candidates"),
    ("few", lambda o, a: o.update(answer="2"), "line 2: field 'answer' is '2', not an integer"),
    ("few", lambda o, a: o.update(content="没有空"), "line 2: the passage has 0 blanks (#idiom#); this layout has one"),
    ("few", lambda o, a: o.update(candidates="一二三四"), "line 2: candidates must be a list of at least 2 non-empty texts"),
    ("clue", lambda o, a: o["content"].append("没有空"), "line 1: passage 2 has no blank (#idiom000123#)"),
    ("clue", lambda o, a: a.pop("#idiom000001#"), "line 1: passage 0: blank #idiom000001# has no answer in"),
    ("clue", lambda o, a: a.update({"#idiom000002#": 10}),
     "line 1, blank #idiom000002#: answer 10 is not the index of one of the 10 candidates"),
    ("clue", lambda o, a: o.update(content=7), "line 1: content is neither a passage (FewCLUE's layout) nor a list")])
def test_chid_bad_rows_are_one_line_naming_file_and_item(tmp_path, model_dir, layout, change, words):
    folder = tmp_path / "chid_public"
    if layout == "few":
        rows = chid_items(3)
        change(rows[1], None)
        write_jsonl(folder / "train.json", chid_items(3))
        write_jsonl(folder / "dev.json", rows)
    else:
        rows, answers = json.loads(json.dumps(CLUE_CHID)), dict(CLUE_CHID_ANSWERS)
        change(rows[0], answers)
        write_clue_chid(folder, "train", CLUE_CHID, CLUE_CHID_ANSWERS)
        write_clue_chid(folder, "dev", rows, answers)
    msg = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "chid")
    assert msg.startswith(f"eval_clue.py: error: {folder / 'dev.json'}: ") and words in msg and "\n" not in msg, msg


def test_chid_without_its_answer_file(tmp_path, model_dir):
    write_clue_chid(tmp_path / "chid_public", "train", CLUE_CHID, CLUE_CHID_ANSWERS)
    write_jsonl(tmp_path / "chid_public" / "dev.json", CLUE_CHID)
    msg = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "chid")
    assert f"dev.json: CLUE's ChID layout (content is a list of passages) keeps its answers in " \
           f"{tmp_path / 'chid_public' / 'dev_answer.json'}, which does not exist" in msg


def test_context_is_cut_around_the_blank_and_counted(model_dir):
    assert eval_clue.around_blank(list(range(10)), list(range(100, 150)), 20) == (list(range(10)), list(range(100, 110)), True)
    assert eval_clue.around_blank(list(range(50)), [100], 20) == (list(range(31, 50)), [100], True)  # the unused room
    assert eval_clue.around_blank(list(range(50)), list(range(100, 150)), 21) == (list(range(40, 50)), list(range(100, 111)), True)
    assert eval_clue.around_blank([1, 2], [3], 20) == ([1, 2], [3], False) and eval_clue.around_blank([1], [2], 0)[:2] == ([], [])
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    enc = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    items = [dict(left=S[1] * 6, right=S[2] * 6, choices=IDIOMS[:3], answer=0, where="f: line 1"),
             dict(left=S[3] + "#idiom#", right="", choices=IDIOMS[3:5], answer=1, where="f: line 2")]
    rows, first, n, start, k, cut = eval_clue.cloze_rows(tok, items, 48)
    assert list(first) == [0, 3] and list(n) == [3, 2] and cut == 1  # the long passage, once for its 3 rows
    for r, c in enumerate(IDIOMS[:5]):
        ids = list(rows.ids[r, :rows.lengths[r]])
        assert ids[0] == 2 and ids[-1] == 3 and ids[start[r]:start[r] + k[r]] == enc(c)  # the candidate, whole, in the blank
    longest = max(k[:3])
    for r in range(3):
        assert rows.lengths[r] == 48 - longest + k[r]  # the same context for each candidate, cut to the longest one's room
        ids = list(rows.ids[r, :rows.lengths[r]])
        left, right = ids[1:start[r]], ids[start[r] + k[r]:-1]
        assert left == enc(S[1] * 6)[-len(left):] and right == enc(S[2] * 6)[:len(right)]  # nearest the blank
        assert abs(len(left) - len(right)) <= 1
    ids = list(rows.ids[3, :rows.lengths[3]])  # the other blank: four masks, whatever its answer
    assert ids[1:start[3]] == enc(S[3]) + [4, 4, 4, 4] and ids[start[3] + k[3]:] == [3]
    with pytest.raises(Refused, match="f: line 1: a candidate of .* tokens leaves too little room"):
        eval_clue.cloze_rows(tok, [dict(items[0], choices=[S[0] * 3, "好"])], 16)


def test_zero_shot_scores_are_exact_and_independent_of_the_batch(model_dir):
    """fp32: the log-probability of a candidate's tokens equals the one computed by hand from a full
    forward pass of its masked row, and is the same bit for bit whether the item is scored alone or
    among others, whose candidates have other lengths (or the same, sharing its batches)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    mlm = CMBert.from_pretrained(str(model_dir)).eval()
    args = argparse.Namespace(device="cpu", autocast=torch.autocast("cpu", enabled=False), progress=False)
    item = dict(left=S[0], right=S[1], choices=[IDIOMS[0], "好", S[2][:7], IDIOMS[3]], answer=0, where="x")
    others = [dict(item, left=S[k], right=S[k + 1] * k, choices=IDIOMS[k:k + 5]) for k in range(2, 7)]
    others.append(dict(item, choices=item["choices"][::-1]))  # the same lengths: shares the item's batches
    for whole_word in (True, False):
        alone = eval_clue.cloze_rows(tok, [item], 64)
        together = eval_clue.cloze_rows(tok, others[:3] + [item] + others[3:], 64)
        a = eval_clue.candidate_logprob(mlm, alone[0], alone[3], alone[4], whole_word, args, "x")
        b = eval_clue.candidate_logprob(mlm, together[0], together[3], together[4], whole_word, args, "x")
        f = together[1][3]
        assert a.tolist() == b[f:f + 4].tolist()  # bit for bit
        rows, start, k = alone[0], alone[3], alone[4]
        for r in range(4):  # by hand
            ids = torch.tensor(rows.ids[r, :rows.lengths[r]], dtype=torch.long)
            want = 0.0
            for group in ([range(start[r], start[r] + k[r])] if whole_word else [[p] for p in range(start[r], start[r] + k[r])]):
                masked = ids.clone()
                masked[list(group)] = 4
                with torch.no_grad():
                    logp = mlm(masked[None])[0][0].log_softmax(-1)
                want += sum(float(logp[p, ids[p]]) for p in group)
            assert a[r] == pytest.approx(want, abs=1e-4), (whole_word, r)
    assert len(set(map(len, (tok.encode(c, add_special_tokens=False).ids for c in item["choices"])))) > 1


def test_chid_fine_tunes_and_scores_zero_shot(tmp_path, model_dir):
    """The answer is always IDIOMS[0]: fine-tuning learns it (one softmax over 7); chance is 1/7; the
    zero-shot score sits next to chance and its no-context baseline on the same items, with the cut
    contexts counted; the CLUE layout runs too; --zero_shot_only fine-tunes nothing."""
    write_jsonl(tmp_path / "chid_public" / "train.json", chid_items(14, long_every=4))
    write_jsonl(tmp_path / "chid_public" / "dev.json", chid_items(7, long_every=3))
    res = evaluate("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "chid", "--init", "random", "--epochs", "6",
                   "--lr", "3e-3", "--batch_size", "4", "--max_len", "64", "--seeds", "1", "--dtype", "float32",
                   "--out", tmp_path / "r.json", "--save", tmp_path / "saved")["chid"]
    assert res["final"] == 1.0 and res["baseline"] == pytest.approx(1 / 7) and res["baseline_name"] == "chance"
    assert res["n_train"] == 14 and res["n_dev"] == 7 and res["contexts_cut"] == dict(train=4, dev=3), res
    assert "3 of 7 dev (42.9%), 4 of 14 train (28.6%)" in res["notes"]
    z = res["zero_shot"]
    assert z["items"] == 7 and z["chance"] == pytest.approx(1 / 7) and z["contexts_cut"] == 3 and z["scoring"] == "word"
    for length in ("mean", "sum"):
        assert {"acc", "acc_se", "no_context", "no_context_se", "gain", "gain_se"} <= set(z[length])
        assert z[length]["gain"] == pytest.approx(z[length]["acc"] - z[length]["no_context"])
    table = json.loads((tmp_path / "r.json").read_text())["table"]
    assert "| chid | acc | 1 | 100.00 | 100.00 | chance 14.29 |" in table
    assert "Zero-shot: the randomly initialised masked LM fills the blank" in table and "| chid | 7 | " in table
    assert json.loads((tmp_path / "saved" / "chid" / "seed42" / "task.json").read_text())["model_class"] == \
        "CMBertForMultipleChoice"
    write_clue_chid(tmp_path / "clue" / "chid_public", "train", CLUE_CHID, CLUE_CHID_ANSWERS)
    write_clue_chid(tmp_path / "clue" / "chid_public", "dev", CLUE_CHID, CLUE_CHID_ANSWERS)
    write_jsonl(tmp_path / "clue" / "afqmc_public" / "train.json", [{"sentence1": "好", "sentence2": "坏", "label": "1"}])
    write_jsonl(tmp_path / "clue" / "afqmc_public" / "dev.json", [{"sentence1": "好", "sentence2": "坏", "label": "1"}])
    out = tmp_path / "zs.json"
    res = evaluate("--model_dir", model_dir, "--data_dir", tmp_path / "clue", "--tasks", "all", "--zero_shot_only",
                   "--mlm_scoring", "token", "--out", out)
    assert set(res) == {"chid"} and "per_seed" not in res["chid"] and res["chid"]["zero_shot"]["items"] == 4
    assert res["chid"]["zero_shot"]["chance"] == pytest.approx(0.1) and res["chid"]["zero_shot"]["scoring"] == "token"
    table = json.loads(out.read_text())["table"]
    assert table.startswith("Zero-shot: the pre-trained masked LM") and "each token masked in turn" in table
    assert "--zero_shot_only: afqmc has no zero-shot score (tasks that have one: chid)" in \
        evaluate("--model_dir", model_dir, "--data_dir", tmp_path / "clue", "--tasks", "afqmc,chid", "--zero_shot_only")


def test_a_dev_pass_shows_progress_unless_told_not_to():
    assert not eval_clue.dev_pass(range(3), argparse.Namespace(progress=True), "tnews").disable
    assert eval_clue.dev_pass(range(3), argparse.Namespace(progress=False), "tnews").disable
