"""eval_clue.py: readers for every task's official format, encodings, CMRC2018 windows and metric,
an end-to-end fine-tune of a tiny model, and bad input."""
import json, os, subprocess, sys

import pytest
import torch
from conftest import ROOT

import eval_clue
from cmbert import CMBert, CMBertConfig

S = ["蚂蚁借呗等额还款可以换成先息后本吗", "借呗有先息到期还本吗", "花呗支持高铁票支付吗", "为什么友付宝不支持花呗付款",
     "今天股市大涨", "这部电影非常好看", "明天会下雨吗", "如何办理信用卡"]


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
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("model")
    CMBert(CMBertConfig(vocab_size=1024, n_layer=4, n_head=2, n_embd=32, intermediate_size=48)).save_pretrained(d)
    (d / "tokenizer.json").write_bytes((tiny_data / "tokenizer.json").read_bytes())
    return d


def test_readers_for_every_task(clue_dir):
    ex, dropped = eval_clue.read_classification("pair", str(clue_dir / "ocnli_public" / "train.50k.json"))
    assert dropped == 6 and len(ex) == 18 and {e[2] for e in ex} == {"entailment", "neutral", "contradiction"}
    ex, _ = eval_clue.read_classification("single", str(clue_dir / "iflytek_public" / "train.json"))
    assert ex[1][2] == "1" and ex[1][1] is None  # integer labels read as strings
    ex, _ = eval_clue.read_classification("csl", str(clue_dir / "csl_public" / "train.json"))
    assert ex[0][0] == S[0][:2] + "、" + S[1][:2] and ex[0][1] == S[0] * 3  # keywords joined, paired with the abstract
    ex, _ = eval_clue.read_classification("wsc", str(clue_dir / "cluewsc2020_public" / "train.json"))
    assert ex[0][0] == "小明把书给了[小红]，因为<她>想看。"
    qa = eval_clue.read_cmrc(str(clue_dir / "cmrc2018_dev.json"))
    assert len(qa) == 2 and qa[0]["answers"] == [("北京", 6)]
    for task in eval_clue.TASKS:
        assert all(os.path.exists(p) for p in eval_clue.task_files(task, str(clue_dir), None).values())


def test_pair_encoding(model_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    enc = tok.encode("今天股市大涨", "明天会下雨吗")
    assert enc.ids[0] == 2 and enc.ids.count(3) == 2 and enc.type_ids[-1] == 1


def test_wsc_marks_spans_in_either_order(tmp_path):
    row = {"text": "她说小红想看书。", "target": {"span1_text": "小红", "span1_index": 2, "span2_text": "她", "span2_index": 0},
           "label": "false", "idx": 0}
    assert eval_clue.mark_wsc(row, "x", 1) == "<她>说[小红]想看书。"
    row["target"]["span1_index"] = 3
    with pytest.raises(eval_clue.EvalError, match="x: line 1: span1_text '小红' is not at span1_index 3"):
        eval_clue.mark_wsc(row, "x", 1)


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


def test_cmrc_metric_on_known_cases():
    assert eval_clue.cmrc_em_f1("北京", [("北京", 0)]) == (1.0, 1.0)
    assert eval_clue.cmrc_em_f1("北京。", [("北京", 0)]) == (1.0, 1.0)  # punctuation ignored
    em, f1 = eval_clue.cmrc_em_f1("在北京", [("北京", 0)])
    assert em == 0.0 and f1 == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert eval_clue.cmrc_em_f1("上海", [("北京", 0), ("首都", 0)]) == (0.0, 0.0)
    assert eval_clue.cmrc_em_f1("iPhone 12", [("iphone12", 0)])[0] == 0.0  # "iphone", "12" vs "iphone12"
    assert eval_clue.cmrc_tokens("Apple公司 2020年") == ["apple", "公", "司", "2020", "年"]


def run_eval(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_clue.py"), "--progress", "False", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_end_to_end_two_tasks_and_random_init(tmp_path, clue_dir, model_dir):
    out = tmp_path / "results.json"
    r = run_eval("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "afqmc,cmrc2018", "--epochs", "2",
                 "--batch_size", "8", "--lr", "1e-3", "--max_len", "64", "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"afqmc", "cmrc2018"}
    afqmc = res["tasks"]["afqmc"]
    assert 0 <= afqmc["final"] <= 1 and afqmc["n_train"] == 40 and afqmc["n_dev"] == 12 and len(afqmc["per_epoch"]) == 2
    assert afqmc["majority"] == 0.5 and res["tasks"]["cmrc2018"]["majority"] is None
    assert "| afqmc | acc |" in r.stdout and "| cmrc2018 | F1 / EM |" in r.stdout
    r = run_eval("--model_dir", model_dir, "--data_dir", clue_dir, "--tasks", "all", "--epochs", "1", "--init", "random",
                 "--max_len", "64")
    assert r.returncode == 0, r.stderr
    res = json.loads((model_dir / "results_clue.json").read_text())
    assert res["init"] == "random" and set(res["tasks"]) == set(eval_clue.TASKS)
    assert "dropped 6 train / 2 dev" in res["tasks"]["ocnli"]["notes"]


def test_fine_tuning_learns(tmp_path, model_dir):
    """The loop really trains: a tiny random model memorises which of 8 sentences has which of 3
    labels (dev = train here), far above the majority class."""
    rows = [{"sentence": S[i % 8], "label": str(100 + (i % 8) % 3), "label_desc": "x", "keywords": ""} for i in range(48)]
    write_jsonl(tmp_path / "tnews_public" / "train.json", rows)
    write_jsonl(tmp_path / "tnews_public" / "dev.json", rows[:8])
    out = tmp_path / "r.json"
    r = run_eval("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "tnews", "--init", "random", "--epochs", "15",
                 "--lr", "3e-3", "--batch_size", "8", "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())["tasks"]["tnews"]
    assert res["majority"] == 3 / 8 and res["final"] >= 7 / 8, res["per_epoch"]


def test_bad_inputs(tmp_path, clue_dir, model_dir):
    r = run_eval("--model_dir", model_dir, "--data_dir", tmp_path, "--tasks", "afqmc")
    assert r.returncode != 0 and "afqmc: missing" in r.stderr and str(tmp_path / "afqmc_public" / "train.json") in r.stderr
    bad = tmp_path / "bad"
    write_jsonl(bad / "tnews_public" / "train.json", [{"sentence": "好", "label": "100"}, {"sentence": "坏", "label": "101"}])
    write_jsonl(bad / "tnews_public" / "dev.json", [{"sentence": "好", "label": "100"}, {"sentence": "坏", "label": "117"}])
    r = run_eval("--model_dir", model_dir, "--data_dir", bad, "--tasks", "tnews")
    assert r.returncode != 0 and "dev.json: line 2: label '117' does not occur" in r.stderr
    empty = tmp_path / "empty_model"
    empty.mkdir()
    r = run_eval("--model_dir", empty, "--data_dir", clue_dir, "--tasks", "afqmc")
    assert r.returncode != 0 and "no config.json" in r.stderr
    other = tmp_path / "other_model"
    CMBert(CMBertConfig(vocab_size=512, n_layer=1, n_head=2, n_embd=32, intermediate_size=48)).save_pretrained(other)
    (other / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    r = run_eval("--model_dir", other, "--data_dir", clue_dir, "--tasks", "afqmc")
    assert r.returncode != 0 and "does not match the model" in r.stderr
