"""
CLUE's files and metrics: the parts of evaluation that are defined by the benchmark, not by us.
eval_clue.py fine-tunes and scores; this module finds each task's files (the official layout or a
release's), reads the official JSON-lines, SQuAD-style, C3 and ChID files (every row checked, a bad
one named by file and line or item), computes CMRC2018's EM and F1
exactly as its official evaluation script does, and the correlations SimCLUE is scored by.
"""
import json, math, os, re

import numpy as np

from .errors import Refused


# ------------------------------------------------------------------------------------------
# Finding each task's files: `tasks` is eval_clue.TASKS (a folder, {role: file name}, other layouts)

def task_paths(spec, data_dir, override=None):
    """A task's files ({role: path}) in the first layout whose files exist (else the first
    layout, so that the error names the files of the official one)."""
    layouts = [(spec["folder"], spec.get("files", dict(train="train.json", dev="dev.json")))] + spec.get("alt", [])
    options = [{role: os.path.normpath(os.path.join(override or os.path.join(data_dir, folder), name))
                for role, name in files.items()} for folder, files in layouts]
    return next((o for o in options if all(map(os.path.isfile, o.values()))), options[0])


def task_files(tasks, task, data_dir, override=None):
    paths = task_paths(tasks[task], data_dir, override)
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise Refused(f"{task}: missing {' and '.join(missing)}")
    return paths


def find_tasks(tasks, args, only=None):
    """The tasks that --tasks names (or, for "all", every task whose files are in --data_dir; --path
    TASK=DIR points one elsewhere) and their files: ([task], {task: {role: path}}). `only`: the tasks
    that --zero_shot_only can score (None: any)."""
    overrides = {}
    for item in args.path:
        task, sep, folder = item.partition("=")
        if not sep or task not in tasks:
            raise Refused(f"--path {item!r}: expected TASK=DIR with TASK one of {', '.join(tasks)}")
        overrides[task] = folder
    if args.tasks == "all":
        found = lambda t: all(map(os.path.isfile, task_paths(tasks[t], args.data_dir, overrides.get(t)).values()))  # noqa: E731
        chosen = [t for t in tasks if (only is None or t in only) and found(t)]
        if not chosen:
            raise Refused(f"{args.data_dir}: no CLUE task files found (expected e.g. "
                          f"{tasks[(only or ['afqmc'])[0]]['folder']}/train.json)")
    else:
        chosen = [t.strip().lower() for t in args.tasks.split(",")]
        unknown = [t for t in chosen if t not in tasks]
        if unknown:
            raise Refused(f"unknown task {unknown[0]!r}; choose from {', '.join(tasks)}")
        if only is not None and set(chosen) - set(only):
            raise Refused(f"--zero_shot_only: {sorted(set(chosen) - set(only))[0]} has no zero-shot score "
                          f"(tasks that have one: {', '.join(only)})")
    return chosen, {t: task_files(tasks, t, args.data_dir, overrides.get(t)) for t in chosen}


# ------------------------------------------------------------------------------------------
# Reading and validating the official files

def read_jsonl(path):
    """(line number, object) for every non-empty line; a line that is not a JSON object is an error."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                obj = json.loads(line) if line.strip() else None
            except UnicodeDecodeError:
                raise Refused(f"{path}: line {lineno}: not UTF-8")
            except json.JSONDecodeError as e:
                raise Refused(f"{path}: line {lineno}: invalid JSON ({e.msg})")
            if obj is None:
                continue
            if not isinstance(obj, dict):
                raise Refused(f"{path}: line {lineno}: not a JSON object")
            yield lineno, obj


def nonempty(rows, path, what="rows"):
    if not rows:
        raise Refused(f"{path}: no {what}")
    return rows


def label_order(labels):
    """Numeric labels in numeric order ("100" < "116"), then the others alphabetically."""
    numeric = lambda s: s.lstrip("-").isdigit()  # noqa: E731
    return sorted(labels, key=lambda s: (not numeric(s), int(s) if numeric(s) else 0, s))


def field(obj, key, path, lineno, kind=str):
    if key not in obj:
        raise Refused(f"{path}: line {lineno}: no field {key!r}")
    value = obj[key]
    if kind is str and not isinstance(value, str) or kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise Refused(f"{path}: line {lineno}: field {key!r} is {value!r}, not {'text' if kind is str else 'an integer'}")
    return value


def label_of(obj, path, lineno):
    """Labels appear both as strings and as integers in circulating copies: read both as strings."""
    label = field(obj, "label", path, lineno, kind=None)
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise Refused(f"{path}: line {lineno}: label {label!r} is neither text nor an integer")
    return str(label)


def read_classification(kind, path):
    """Examples as (text_a, text_b or None, label string, line)."""
    out, dropped = [], 0
    for lineno, o in read_jsonl(path):
        label = label_of(o, path, lineno)
        if label == "-":  # NLI rows without annotator agreement
            dropped += 1
            continue
        if kind == "single":
            a, b = field(o, "sentence", path, lineno), None
        elif kind == "pair":
            a, b = field(o, "sentence1", path, lineno), field(o, "sentence2", path, lineno)
        elif kind == "csl":  # the keywords, joined, paired with the abstract
            kw = field(o, "keyword", path, lineno, kind=None)
            if not isinstance(kw, list) or not all(isinstance(k, str) for k in kw):
                raise Refused(f"{path}: line {lineno}: field 'keyword' is {kw!r}, not a list of texts")
            a, b = "、".join(kw), field(o, "abst", path, lineno)
        else:  # wsc
            a, b = mark_wsc(o, path, lineno), None
        out.append((a, b, label, lineno))
    return out, dropped


def mark_wsc(o, path, lineno):
    """CLUEWSC2020: mark the candidate noun phrase with [ ] and the pronoun with < >, inserted at the
    given character offsets, so the classifier sees which two spans the question is about."""
    text, t = field(o, "text", path, lineno), field(o, "target", path, lineno, kind=None)
    if not isinstance(t, dict):
        raise Refused(f"{path}: line {lineno}: field 'target' is {t!r}, not an object")
    spans = []
    for k, (left, right) in (("1", ("[", "]")), ("2", ("<", ">"))):
        i, s = field(t, f"span{k}_index", path, lineno, kind=int), field(t, f"span{k}_text", path, lineno)
        if i < 0 or text[i:i + len(s)] != s:
            raise Refused(f"{path}: line {lineno}: span{k}_text {s!r} is not at span{k}_index {i}")
        spans.append((i, i + len(s), left, right))
    for i, j, left, right in sorted(spans, reverse=True):  # right to left keeps the offsets valid
        text = text[:i] + left + text[i:j] + right + text[j:]
    return text


def read_json_document(path):
    """A file that is one JSON document (CMRC2018, C3), or one line naming the file's fault."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise Refused(f"{path}: not UTF-8")
    except json.JSONDecodeError as e:
        raise Refused(f"{path}: invalid JSON at line {e.lineno} ({e.msg})")


def read_cmrc(path):
    """SQuAD-style: data -> paragraphs -> (context, qas -> (question, answers[text, answer_start])).
    One JSON document, so a fault is named by its place in it (data[i].paragraphs[j].qas[k])."""
    data = read_json_document(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise Refused(f"{path}: not a SQuAD-style CMRC2018 file (no 'data' list)")
    out = []
    for i, doc in enumerate(data["data"]):
        for j, para in enumerate(doc.get("paragraphs", []) if isinstance(doc, dict) else [None]):
            for k, qa in enumerate(para.get("qas", []) if isinstance(para, dict) else [None]):
                where = f"{path}: data[{i}].paragraphs[{j}].qas[{k}]"
                try:
                    context = para["context"]
                    answers = [(a["text"], int(a["answer_start"])) for a in qa["answers"]]
                    ex = dict(id=str(qa["id"]), context=context, question=qa["question"], answers=answers)
                except (KeyError, TypeError, ValueError) as e:
                    raise Refused(f"{where}: missing or malformed field ({type(e).__name__}: {e})")
                if not all(isinstance(s, str) for s in (context, ex["question"], *(a for a, _ in answers))):
                    raise Refused(f"{where}: context, question and answer texts must be strings")
                ex["answers"] = [(a, s if context[s:s + len(a)] == a else locate(context, a, s)) for a, s in answers]
                out.append(ex)
    return out


def read_c3(path):
    """C3 (CLUE's multiple-choice reading comprehension): one JSON array whose items are
    [[passage lines], [{"question", "choice": [texts], "answer": one of them}, ...], id]. Returns one
    dict per question: passage (the lines joined without a separator, which is what the BERT
    baselines read: their tokenizer drops the newline), question, choices, answer (the index of the
    answer's first occurrence: a few released questions repeat a choice), passage_id (path, item).
    A fault is named by file and item (items and questions counted from 0, as in the array)."""
    data = read_json_document(path)
    if not isinstance(data, list):
        raise Refused(f"{path}: not a C3 file (a JSON array of [passage lines, questions, id] items)")
    texts = lambda x: isinstance(x, list) and all(isinstance(s, str) for s in x)  # noqa: E731
    out = []
    for i, item in enumerate(data):
        where = f"{path}: item {i}"
        if not (isinstance(item, list) and len(item) == 3 and texts(item[0]) and isinstance(item[1], list)):
            raise Refused(f"{where}: not [passage lines, questions, id]")
        where += f" ({item[2]})"
        for j, q in enumerate(item[1]):
            if not isinstance(q, dict) or not all(k in q for k in ("question", "choice", "answer")):
                raise Refused(f"{where} question {j}: not an object with question, choice and answer")
            if not isinstance(q["question"], str) or not texts(q["choice"]) or not isinstance(q["answer"], str):
                raise Refused(f"{where} question {j}: question and answer must be texts, choice a list of texts")
            if len(q["choice"]) < 2:
                raise Refused(f"{where} question {j}: {len(q['choice'])} choices; a question needs at least 2")
            if q["answer"] not in q["choice"]:
                raise Refused(f"{where} question {j}: answer {q['answer']!r} is not among the choices")
            out.append(dict(passage="".join(item[0]), question=q["question"], choices=q["choice"],
                            answer=q["choice"].index(q["answer"]), passage_id=(path, i)))
    return out


def choice_answers(questions):
    """Multiple choice (C3, ChID): which rows are right, question after question (a prediction is right
    when its text is the answer's, so a repeated answer counts either way), and chance: the expected
    accuracy of a uniform guess on the same questions (the share of each one's choices that are its answer)."""
    text = lambda q: q["choices"][q["answer"]]  # noqa: E731
    return dict(dev_right=np.array([c == text(q) for q in questions for c in q["choices"]], dtype=bool),
                baseline=float(np.mean([q["choices"].count(text(q)) / len(q["choices"]) for q in questions])))


BLANK = "#idiom#"  # FewCLUE's blank; also what another blank of the same passage is left as
NUMBERED_BLANK = re.compile(r"#idiom\d+#")  # CLUE's blanks: #idiom000123#


def read_chid(path):
    """ChID (CLUE's idiom cloze), in either layout, one JSON object per line:
      FewCLUE: {"id", "candidates": [idioms], "content": a passage with one "#idiom#", "answer": index};
      CLUE:    {"candidates": [idioms], "content": [passages with numbered blanks "#idiom000123#"]}, the
               answers in <name>_answer.json beside it ({"#idiom000123#": index}), the candidates shared
               by every blank of the line.
    Returns one dict per blank: left and right (the passage's text before and after it, where any
    other blank of the passage is left as "#idiom#": how to show it is the caller's choice, and it
    must not be its answer), choices (the candidates), answer (an index into them), where (file and
    line, for messages). A fault is named by file, line and blank."""
    out, answers = [], None

    def add(left, right, cands, answer, where):
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(cands):
            raise Refused(f"{where}: answer {answer!r} is not the index of one of the {len(cands)} candidates")
        out.append(dict(left=left, right=right, choices=cands, answer=answer, where=where))
    for lineno, o in read_jsonl(path):
        where = f"{path}: line {lineno}"
        cands, content = field(o, "candidates", path, lineno, kind=None), field(o, "content", path, lineno, kind=None)
        if not (isinstance(cands, list) and len(cands) >= 2 and all(isinstance(c, str) and c.strip() for c in cands)):
            raise Refused(f"{where}: candidates must be a list of at least 2 non-empty texts, not {cands!r:.80}")
        if isinstance(content, str):  # FewCLUE
            answer, (left, *right) = field(o, "answer", path, lineno, kind=int), content.split(BLANK)
            if len(right) != 1:
                raise Refused(f"{where}: the passage has {len(right)} blanks ({BLANK}); this layout has one per line")
            add(left, right[0], cands, answer, where)
        elif isinstance(content, list) and all(isinstance(p, str) for p in content):  # CLUE
            answers = answers if answers is not None else chid_answers(path)
            for k, passage in enumerate(content):
                tags = NUMBERED_BLANK.findall(passage)
                if not tags:
                    raise Refused(f"{where}: passage {k} has no blank (#idiom000123#)")
                for tag in tags:
                    if tag not in answers[1]:
                        raise Refused(f"{where}: passage {k}: blank {tag} has no answer in {answers[0]}")
                    if passage.count(tag) > 1:
                        raise Refused(f"{where}: passage {k}: blank {tag} occurs twice")
                    left, _, right = passage.partition(tag)
                    add(NUMBERED_BLANK.sub(BLANK, left), NUMBERED_BLANK.sub(BLANK, right), cands, answers[1][tag],
                        f"{where}, blank {tag}")
        else:
            raise Refused(f"{where}: content is neither a passage (FewCLUE's layout) nor a list of passages (CLUE's)")
    return out


def chid_answers(path):
    """(path, {blank: answer index}) of CLUE's answer file for `path` (train.json -> train_answer.json)."""
    answers_path = os.path.splitext(path)[0] + "_answer.json"
    if not os.path.isfile(answers_path):
        raise Refused(f"{path}: CLUE's ChID layout (content is a list of passages) keeps its answers in "
                      f"{answers_path}, which does not exist")
    answers = read_json_document(answers_path)
    if not isinstance(answers, dict):
        raise Refused(f"{answers_path}: not a JSON object mapping each blank (#idiom000123#) to its answer's index")
    return answers_path, answers


def locate(context, answer, start):
    """Released files hold a few answer_start values that are off by some characters: the answer's
    occurrence nearest to the given start, or -1 when the context does not contain it."""
    found = [m.start() for m in re.finditer(re.escape(answer), context)] if answer else []
    return min(found, key=lambda i: abs(i - start)) if found else -1


def read_simclue_pairs(path):
    """SimCLUE pairs (sentence1, sentence2, label 0/1) as (a, b, label, line)."""
    out = []
    for lineno, o in read_jsonl(path):
        label = label_of(o, path, lineno)
        if label not in ("0", "1"):
            raise Refused(f"{path}: line {lineno}: label {label!r} is not 0 or 1")
        out.append((field(o, "sentence1", path, lineno), field(o, "sentence2", path, lineno), int(label), lineno))
    return out


def read_simclue_triples(path):
    """SimCLUE's ranking file: (query, title = a paraphrase, neg_title = a hard negative)."""
    return [tuple(field(o, k, path, lineno) for k in ("query", "title", "neg_title")) for lineno, o in read_jsonl(path)]


# ------------------------------------------------------------------------------------------
# The official CMRC2018 metric

CMRC_PUNCT = set("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")


def cmrc_em(prediction, answers):
    """EM: some reference equals the prediction after lower-casing, stripping the ends and removing
    the listed punctuation. Spaces inside are kept ("iphone 12" != "iphone12"), and stripping comes
    before removal, so "北京 。" keeps its space and does not equal "北京"."""
    def norm(s):
        return "".join(ch for ch in s.lower().strip() if ch not in CMRC_PUNCT)
    return float(any(norm(prediction) == norm(a) for a in answers))


def on_token_edges(tok, ex):
    """Whether some reference answer starts and ends on token edges of the context: if none does,
    no predicted token span can match it exactly, which caps EM below 100."""
    offsets = tok.encode(ex["context"], add_special_tokens=False).offsets
    starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
    return any(s in starts and s + len(a) in ends for a, s in ex["answers"])


def cmrc_segments(text):
    """The official segmentation: lower-case and strip; drop listed punctuation *without* ending a
    run ("a-b" -> "ab", "3:30" -> "330"); each character in U+4E00..U+9FA5 is one token; every other
    run of characters (ASCII, spaces, digits, other punctuation, rarer CJK) goes through NLTK's
    word tokenizer, so "3.5" stays one token and "(1998)" becomes "(", "1998", ")"."""
    out, run = [], ""
    for ch in text.lower().strip():
        if ch in CMRC_PUNCT:
            continue
        if "\u4e00" <= ch <= "\u9fa5":
            out += treebank_words(run) + [ch]
            run = ""
        else:
            run += ch
    return out + treebank_words(run)


# NLTK's word_tokenize is Punkt sentence splitting followed by the Penn Treebank word tokenizer. These
# are the Treebank tokenizer's rules (applied in order, in Python 2's ASCII regex semantics, as the
# official script ran), written out here so the metric needs no NLTK. Punkt's sentence split is not
# reproduced: it only matters for a run holding ". " followed by another sentence, where the period
# would become its own token. Answers' non-Chinese runs are names, numbers and dates, not sentences.
_TREEBANK = [(re.compile(p, re.ASCII), r) for p, r in [
    (r'^"', "``"), (r"(``)", r" \1 "), (r"([ (\[{<])(\"|'{2})", r"\1 `` "),  # opening quotes
    (r"([:,])([^\d])", r" \1 \2"), (r"([:,])$", r" \1 "),  # , and : unless inside a number
    (r"\.\.\.", " ... "), (r"[;@#$%&]", r" \g<0> "),
    (r"([^\.])(\.)([\]\)}>\"']*)\s*$", r"\1 \2\3 "),  # a final period (not "3.5", not "U.S" inside)
    (r"[?!]", r" \g<0> "), (r"([^'])' ", r"\1 ' "), (r"[\]\[(){}<>]", r" \g<0> "), (r"--", " -- ")]]
_TREEBANK_END = [(re.compile(p, re.ASCII), r) for p, r in [
    (r"''", " '' "), (r'"', " '' "),  # closing quotes
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "), (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 ")]]
_TREEBANK_END += [(re.compile(p, re.ASCII | re.IGNORECASE), r" \1 \2 ") for p in [  # cannot -> can not, ...
    r"\b(can)(not)\b", r"\b(d)('ye)\b", r"\b(gim)(me)\b", r"\b(gon)(na)\b", r"\b(got)(ta)\b", r"\b(lem)(me)\b",
    r"\b(more)('n)\b", r"\b(wan)(na)(?=\s)", r" ('t)(is)\b", r" ('t)(was)\b"]]


def treebank_words(text):
    if not text:
        return []
    for pattern, repl in _TREEBANK:
        text = pattern.sub(repl, text)
    text = " " + text + " "
    for pattern, repl in _TREEBANK_END:
        text = pattern.sub(repl, text)
    return text.split()


def longest_common_substring(a, b):
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def cmrc_f1(prediction, answers):
    """F1 from the longest common *substring* of the two segmentations (not the bag-of-tokens
    overlap of SQuAD), maximised over the references."""
    p, best = cmrc_segments(prediction), 0.0
    for ref in answers:
        r = cmrc_segments(ref)
        lcs = longest_common_substring(r, p)
        if lcs:
            prec, rec = lcs / len(p), lcs / len(r)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


# ------------------------------------------------------------------------------------------
# Correlations (SimCLUE: cosine similarity against the 0/1 label)

def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def average_ranks(x):
    """Ranks 1..n; tied values share the average of the ranks they span."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse.reshape(-1)]


def spearman(x, y):
    """Pearson correlation of the average ranks (how scipy.stats.spearmanr treats ties)."""
    return pearson(average_ranks(x), average_ranks(y))
