"""The method's figures (plot.py --figures) and the course notebook: drawn by the lecture's own
functions, small, the same bytes every time, each shown in docs/method.md; the notebook runs top to
bottom on a fresh clone (no data/default, no out/)."""
import json, os, shutil

import pytest
from conftest import ROOT

from support import figures
from support.errors import Refused

NOTEBOOK = os.path.join(ROOT, "notebooks", "cmbert_course.ipynb")


@pytest.fixture
def font():
    """The figures need a font with Chinese glyphs (.ci/run installs one): without it, skip."""
    try:
        return figures.cjk_font()
    except Refused as e:
        pytest.skip(str(e.code))


def test_every_figure_is_drawn_small_the_same_twice_and_shown_in_the_method(tmp_path, tiny_data, font):
    import plot
    from support.tokens import load_tokenizer
    plot.main(["--figures", str(tmp_path / "a"), "--tokenizer", str(tiny_data / "tokenizer.json")])
    makers = plot.figure_makers(load_tokenizer(tiny_data / "tokenizer.json"))
    sizes = {name: (tmp_path / "a" / name).stat().st_size for name in makers}
    assert sorted(os.listdir(tmp_path / "a")) == sorted(makers)
    assert all(10_000 < size < 100_000 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 400_000, sizes
    # the same figure, drawn again, is the same file (the masks' seeds are fixed, no time stamps)
    (tmp_path / "b").mkdir()
    for name in ["masking.png", "attention.png"]:
        figures.save(makers[name](), tmp_path / "b" / name)
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    # each figure is committed and appears in docs/method.md
    method = open(os.path.join(ROOT, "docs", "method.md"), encoding="utf-8").read()
    for name in makers:
        assert os.path.exists(os.path.join(ROOT, "docs", "figures", name)), name
        assert f"](figures/{name})" in method, name


def test_without_a_chinese_font_the_figures_say_what_to_install(monkeypatch, tmp_path):
    import plot
    from matplotlib import font_manager
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    figures.cjk_font.cache_clear()
    try:
        with pytest.raises(SystemExit, match=r"^plot.py: error: no font with Chinese glyphs found: install one, e\.g\. "
                                             r"`apt-get install fonts-wqy-microhei`") as e:
            plot.main(["--figures", str(tmp_path), "--tokenizer", "unused.json"])
        assert "\n" not in str(e.value.code)
        assert not os.listdir(tmp_path), "nothing is written"
    finally:
        figures.cjk_font.cache_clear()


def test_plot_wants_runs_or_figures(capsys):
    import plot
    with pytest.raises(SystemExit) as e:
        plot.main([])
    assert e.value.code == 2 and "give run directories to compare, or --figures DIR" in capsys.readouterr().err


def test_the_notebook_is_kept_without_outputs():
    """It diffs cleanly: no outputs, no execution counts (clear them before committing)."""
    nb = json.load(open(NOTEBOOK, encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_the_notebook_runs_top_to_bottom_on_a_fresh_clone(tmp_path, font):
    """The lecture's code and the notebook, copied without data/ and out/: the notebook prepares its
    own small sample of the default corpus, draws every figure and trains a tiny model, in a real
    Jupyter kernel (nbclient); a failing cell fails the test with its error."""
    import nbformat
    from nbclient import NotebookClient
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in os.listdir(ROOT):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, name), clone / name)
    for folder in ["support", "config", "notebooks"]:
        shutil.copytree(os.path.join(ROOT, folder), clone / folder, ignore=shutil.ignore_patterns("__pycache__"))
    nb = nbformat.read(clone / "notebooks" / "cmbert_course.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(clone / "notebooks")}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread: the machine's cores are shared
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 13, "every figure is shown"
    text = "".join(o.get("text", "") for o in outputs)
    assert "dataset data/notebook/data" in text and "fill-mask demo" in text
    assert not (clone / "out").exists()
