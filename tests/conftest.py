"""Shared fixtures: a small Chinese corpus written by the tests themselves, prepared once."""
import json, os, random, sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SENTENCES = [
    "今天天气很好，我们一起去公园散步。", "中华人民共和国成立于一九四九年。", "他在北京大学学习计算机科学。",
    "这本书的内容非常丰富，值得一读。", "经济发展需要科技创新的支持。", "小明喜欢在周末看电影和读小说。",
    "新华社记者报道了这次重要会议。", "人工智能正在改变我们的生活方式。", "服务态度很差，再也不会来了。",
    "酒店的位置很方便，离地铁站很近。", "政府工作报告提出了新的发展目标。", "我们应该保护环境，节约资源。",
    "这家餐厅的菜味道不错，价格也合理。", "学生们在教室里认真地听老师讲课。", "全国各地的农民迎来了丰收。",
    "股票市场今天出现了较大的波动。", "足球比赛吸引了很多观众到场观看。", "医生建议他多休息，少熬夜。",
    "春节期间，很多人回家和家人团聚。", "科学家发现了一种新的治疗方法。", "这部手机的电池续航时间很长。",
    "城市交通拥堵的问题越来越严重。", "他们计划明年去上海旅游。", "图书馆里有很多珍贵的古籍。",
]


def shard_names(out, split):
    """The shards of a split, in the manifest's order."""
    return [s["name"] for s in json.loads((out / "meta.json").read_text())["shards"][split]]


def split_arrays(out, split="train"):
    """A split's token ids and word flags as one stream: its shards in manifest order, concatenated
    (what train.py reads as one array)."""
    names = shard_names(out, split)
    return (np.concatenate([np.fromfile(out / "shards" / f"{n}.bin", "<u2") for n in names]),
            np.concatenate([np.fromfile(out / "shards" / f"{n}.words.bin", np.uint8) for n in names]))


def make_corpus(n_docs, seed=0):
    """n_docs distinct documents of 1-6 sentences (prepare.py drops exact duplicates)."""
    rng, docs = random.Random(seed), {}
    while len(docs) < n_docs:
        docs.setdefault("".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6))), None)
    return list(docs)


def make_long_corpus(path, n_short=300, n_long=24, paragraphs=60, seed=0):
    """A blank-line-separated corpus (one document per block): short documents with long ones, of
    `paragraphs` paragraphs each, spread among them. Returns the documents as prepare.py joins them."""
    rng = random.Random(seed)
    short = make_corpus(n_short, seed)
    docs = []
    for i, doc in enumerate(short):
        docs.append(doc)
        if i % (n_short // n_long) == 0 and len(docs) < n_short + n_long:
            docs.append("\n".join(f"第{i}篇第{p}段。" + "".join(rng.choice(SENTENCES) for _ in range(3))
                                   for p in range(paragraphs)))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return docs


@pytest.fixture(scope="session")
def long_data(tmp_path_factory):
    """Blank-line documents, some of them a few thousand tokens long (for stages and near/far)."""
    import prepare
    src = tmp_path_factory.mktemp("long") / "long.txt"
    make_long_corpus(src)
    out = tmp_path_factory.mktemp("data") / "long"
    prepare.main(["--input", str(src), "--out_dir", str(out), "--vocab_size", "1024", "--doc_format", "blank",
                  "--quiet", "--workers", "1"])
    return out


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(make_corpus(1500)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, corpus_file):
    """A prepared dataset (1024-token vocabulary) that the model and training tests share."""
    import prepare
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare.main(["--input", str(corpus_file), "--out_dir", str(out), "--vocab_size", "1024",
                  "--quiet", "--workers", "1"])
    return out
