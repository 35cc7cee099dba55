"""
The mechanics of the method's figures (plot.py --figures, the course notebook): a font that draws
Chinese, a colour-blind-safe palette, and small PNG files that come out byte for byte the same
every time.
What the figures show is drawn in plot.py, from the lecture's own functions.
"""
import functools

from .errors import Refused
from .files import atomic_path

# Okabe & Ito's palette: its colours stay distinct under the common colour-vision deficiencies
# (matplotlib's default 'tab10' puts red beside green).
COLORS = dict(black="#000000", orange="#E69F00", sky="#56B4E9", green="#009E73", yellow="#F0E442",
              blue="#0072B2", vermillion="#D55E00", purple="#CC79A7", grey="#999999", light="#E8E8E8")

# Fonts with Chinese glyphs, in the order they are preferred: the first is the one CI installs
# (Debian's fonts-wqy-microhei), so figures redrawn there match the committed ones byte for byte.
CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "Droid Sans Fallback", "Microsoft YaHei", "PingFang SC", "SimHei", "Arial Unicode MS")
PROBE = "中文汉字词元掩码"  # characters a font must have to be taken
INSTALL = ("no font with Chinese glyphs found: install one, e.g. `apt-get install fonts-wqy-microhei` "
           "(Debian, Ubuntu) or Noto Sans CJK SC (any system), then run again")
DPI = 100


@functools.lru_cache(maxsize=None)
def cjk_font():
    """(family name, file) of a font that draws Chinese: the first of CJK_FONTS installed, else any
    font that has the PROBE characters. The system's font folders are scanned afresh (matplotlib's
    own font cache may predate a font installed a minute ago), and the font is registered with
    matplotlib. No such font: one line saying what to install."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    found = {}
    for path in sorted(font_manager.findSystemFonts()):
        try:
            font = FT2Font(path)
        except (OSError, RuntimeError, ValueError):  # unreadable or unsupported font files are passed over
            continue
        charmap = font.get_charmap()
        if all(ord(c) in charmap for c in PROBE):
            found.setdefault(font.family_name, path)
    for name in CJK_FONTS + tuple(sorted(found)):
        if name in found:
            font_manager.fontManager.addfont(found[name])
            return name, found[name]
    raise Refused(INSTALL)


def style():
    """rcParams for every figure: Latin text in DejaVu Sans (matplotlib's own, on every machine),
    Chinese in the CJK font (matplotlib falls back to it glyph by glyph), the palette above."""
    import matplotlib
    from cycler import cycler
    name, _ = cjk_font()
    matplotlib.rcParams.update({
        "font.family": ["DejaVu Sans", name], "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
        "legend.fontsize": 8, "axes.prop_cycle": cycler(color=[COLORS[c] for c in (
            "blue", "orange", "green", "vermillion", "purple", "sky", "yellow", "black")]),
        "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": DPI, "savefig.dpi": DPI})


def blank(size=(9, 3)):
    """A figure outside pyplot: no global list of figures, no backend switched, so the same call draws
    into a file (plot.py) or inline in a notebook, where a returned figure is shown."""
    from matplotlib.figure import Figure
    style()
    return Figure(figsize=size, layout="constrained")


def new(rows=1, cols=1, size=(9, 3), **kwargs):
    """A blank figure and a (rows, cols) array of its axes."""
    fig = blank(size)
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs)


def save(fig, path):
    """The PNG of a figure, written atomically, in 256 colours (no dithering: line art and text look
    the same, in a third of the bytes) and with no metadata: the same figure gives the same bytes."""
    import io
    from PIL import Image
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    image = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="png", optimize=True)
