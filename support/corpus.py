"""
Reading a corpus: files, directories and globs of .txt / .jsonl / .json / .csv / .tsv / .parquet,
optionally gzipped, as a stream of documents in a fixed order, in bounded memory (a line of any
length arrives in parts; a JSON or CSV record is parsed whole; parquet is read one row group at a
time; a .json array is the one format read whole). Bad input is one line naming the file and the
line or byte offset.

A large file is cut into slices, each read on its own (by another process or machine): a plain-text
or JSON-lines file into byte ranges, a parquet file into runs of row groups. A slice owns the
documents that begin in its range, so the slices of a file, read one after the other, give exactly
the file's documents; where the cuts fall depends on the file and the slice size alone.
"""
import codecs, csv, glob, gzip, json, os, sys

from .errors import Refused

KINDS = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")  # each optionally .gz


def file_kind(path):
    """"txt", "jsonl", "json", "csv", "tsv" or "parquet" by the file's name, else None."""
    name = path.lower().removesuffix(".gz")
    return next((ext[1:] for ext in KINDS if name.endswith(ext)), None)


def is_empty(path):
    """No bytes at all (or, gzipped, none once decompressed)."""
    if os.path.getsize(path) == 0:
        return True
    if path.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read(1) == b""
        except (OSError, EOFError):
            return False  # a broken file is reported when it is read, with its line
    return False


def resolve_inputs(patterns, say=print, doc_format="line"):
    """Expand files, directories (recursively) and globs into a sorted, de-duplicated file list.
    What is not read as its name says is said in one line each (`say`): an empty file is skipped, and
    a file named explicitly whose kind its name does not tell is read as plain text."""
    files = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = sorted(glob.glob(pat, recursive=True))
            if not hits:
                raise Refused(f"{pat}: no file matches this pattern")
        elif not os.path.exists(pat):
            raise Refused(f"{pat}: no such file or directory")
        else:
            hits = [pat]
        for hit in hits:
            if os.path.isdir(hit):
                found = sorted(os.path.join(d, f) for d, _, fs in os.walk(hit) for f in fs
                               if file_kind(f) is not None)
                if not found:
                    raise Refused(f"{hit}: directory has no readable files ({', '.join(KINDS)}, optionally .gz)")
                files += found
            else:
                files.append(hit)
    kept = []
    for path in dict.fromkeys(os.path.abspath(f) for f in files):
        if os.path.isfile(path) and is_empty(path):
            say(f"{path}: skipped (empty)")
            continue
        if file_kind(path) is None:
            say(f"{path}: read as plain text, " + ("documents separated by blank lines" if doc_format == "blank" else
                "one document per line") + f" (its name does not end in {', '.join(KINDS)})")
        kept.append(path)
    return kept


# Encodings in which a slice may begin at any line: a byte 0x0A is always a newline, a line start
# is always a character start, and the decoder carries nothing from one line to the next.
SLICEABLE_ENCODINGS = {"utf-8", "gb18030", "gbk", "gb2312", "big5", "big5hkscs", "ascii", "iso8859-1"}


class Lines:
    """The lines of a (possibly gzipped) text file as (line_number, text, line_done), or of the slice
    of it that begins at byte `start` and ends at byte `end` (None: the end of the file). A line
    longer than read_bytes arrives in several parts (line_done False until its last part), so one
    huge line is never held in memory whole. Bad bytes name the file, line and byte offset.

    Where a slice begins and ends: with blank=False (a document is a line) at the first line that
    begins at or after `start`, and before the first line that begins at or after `end`; with
    blank=True (documents are separated by blank lines) just after the first blank line that begins
    at or after `start`, and before the first that begins at or after `end`. So the slices
    [0, a), [a, b), ... of a file share its documents out, each read once. Line numbers count from
    the slice's first line (where() turns one into the file's, counting only when there is an error)."""

    def __init__(self, path, encoding, read_bytes, start=0, end=None, blank=False):
        self.path, self.encoding, self.read_bytes = path, encoding, read_bytes
        self.start, self.end, self.blank = start, end, blank
        self.first = 0  # the byte offset of the slice's first line

    def where(self, lineno):
        """'line N' of the file, for line `lineno` of the slice (the lines before it counted now)."""
        if self.first:
            with open(self.path, "rb") as f:
                lineno += sum(block.count(b"\n") for block in iter(lambda: f.read(min(1 << 24, self.first - f.tell())), b""))
        return f"line {lineno}"

    def __iter__(self):
        decoder = codecs.getincrementaldecoder(self.encoding)()
        whole_lines = codecs.lookup(self.encoding).name in SLICEABLE_ENCODINGS  # a line decodes alone
        with (gzip.open if self.path.lower().endswith(".gz") else open)(self.path, "rb") as f:  # never cut
            head = f.read(8192)  # sniff the file's head first: a binary file must not be reported as a decoding error
            if b"\0" in head:
                raise Refused(f"{self.path}: binary data (NUL byte at byte offset {head.index(0)}); expected text")
            f.seek(max(self.start - 1, 0))
            while self.start and not (raw := f.readline(self.read_bytes)).endswith(b"\n") and raw:
                pass  # the end of the line that holds byte start - 1: the next line begins at or after start
            offset = self.first = f.tell()
            lineno, done, skip = 1, True, self.blank and self.start > 0
            while raw := f.readline(self.read_bytes):
                line_start = done
                # a part is a line's last when it ends the line or the file (readline stops short of the limit)
                done = raw.endswith(b"\n") or len(raw) < self.read_bytes
                nul = raw.find(b"\0")
                if nul >= 0:
                    raise Refused(f"{self.path}: {self.where(lineno)}: binary data (NUL byte at byte offset "
                                  f"{offset + nul}); expected text")
                held = 0 if line_start else len(decoder.getstate()[0])  # bytes of a character cut at the last part's end
                try:
                    text = raw.decode(self.encoding) if whole_lines and line_start and done else \
                        decoder.decode(raw, final=done)
                except UnicodeDecodeError as e:
                    raise Refused(f"{self.path}: {self.where(lineno)}, byte offset {offset - held + e.start}: not valid "
                                  f"{self.encoding} (try --encoding gb18030 or the file's real encoding)")
                is_blank = line_start and done and not text.strip()
                if line_start and self.end is not None and offset >= self.end and (is_blank or not self.blank):
                    return  # the next slice begins here
                if not skip:
                    yield lineno, text, done
                skip = skip and not is_blank
                offset += len(raw)
                lineno += done
            if not done:  # the file ended exactly at a part's limit, inside a line
                try:
                    text = decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    raise Refused(f"{self.path}: {self.where(lineno)}: the file ends inside a {self.encoding} character")
                if not skip:
                    yield lineno, text, True


def plan_slices(files, slice_bytes, encoding, readers=None):
    """The units of work: each file cut into slices of about slice_bytes, as records {"file": index,
    "bytes": [start, end]} (end None: to the end of the file) or {"file": index, "row_groups":
    [first, end]}, or whole, {"file": index}; each with its "size" in bytes (for scheduling). Cut:
    plain text and JSON lines (into byte ranges, in an encoding where a line start is a character
    start), parquet (into row groups). Kept whole: a gzip stream (it cannot be entered in the
    middle), CSV (a quoted field may hold a newline, so a line start need not begin a record), a
    JSON array, and a file with its own reader (its documents may be groups of lines)."""
    out = []
    for i, path in enumerate(files):
        kind, size = file_kind(path) or "txt", os.path.getsize(path)
        if kind == "parquet":
            runs, first, total = [], 0, 0  # runs of row groups of at most slice_bytes (or one group)
            for g, n in enumerate(group.total_byte_size for group in row_groups(path)):
                if g > first and total + n > slice_bytes:
                    runs.append(dict(file=i, row_groups=[first, g], size=total))
                    first, total = g, 0
                total += n
            runs.append(dict(file=i, row_groups=[first, None], size=total))  # the last: to the end of the file
            out += runs if len(runs) > 1 else [dict(file=i, size=size)]
        elif kind in ("txt", "jsonl") and not path.lower().endswith(".gz") and not (readers and path in readers) \
                and codecs.lookup(encoding).name in SLICEABLE_ENCODINGS and size > slice_bytes:
            n = -(-size // slice_bytes)
            out += [dict(file=i, bytes=[k * slice_bytes, (k + 1) * slice_bytes if k + 1 < n else None],
                         size=min(slice_bytes, size - k * slice_bytes)) for k in range(n)]
        else:
            out.append(dict(file=i, size=size))
    return out


def slice_name(path, span):
    """How messages name a slice: the file, and the part of it unless it is whole."""
    part = next(((k, v) for k, v in span.items() if k in ("bytes", "row_groups")), None)
    if part is None:
        return path
    first, end = part[1]
    return f"{path} ({part[0].replace('_', ' ')} {first}-{'end' if end is None else end})"


def doc_text(obj, fields, where):
    """Join the text fields of one JSON record ('title,content' -> title + newline + content)."""
    if not isinstance(obj, dict):
        raise Refused(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj]
    if missing:
        raise Refused(f"{where}: no text field {missing[0]!r} (use --text_field; "
                      f"fields here: {', '.join(map(str, obj)) or 'none'})")
    return "\n".join(str(obj[k]) for k in fields if obj[k] is not None)


def read_documents(files, fields, encoding, doc_format, read_bytes, readers=None, span=None):
    """Yield every document as (part, last) pairs, file after file, in a fixed order: a document is
    one or more consecutive parts, the last with last=True. `span`, a record of plan_slices, reads
    that slice of the file (of one file). What a document is:
      .txt, doc_format "line":  one line (a long line arrives in parts);
      .txt, doc_format "blank": consecutive non-blank lines, joined by newlines; a blank line (or the
                                end of the file) ends the document (Google BERT's pre-training format);
      .jsonl / .json / .csv / .tsv / .parquet: one record (a CSV row under a header line), its text
                                fields joined by newlines;
      a file in `readers` ({path: function(path, lines)}): what that function yields."""
    start, end = (span or {}).get("bytes", [0, None])
    lines = lambda path, blank=False: Lines(path, encoding, read_bytes, start, end, blank)  # noqa: E731
    for path in files:
        kind = file_kind(path) or "txt"  # a file named explicitly is read as text
        if readers and path in readers:
            yield from readers[path](lines(path))
        elif kind == "parquet":
            yield from read_parquet(path, fields, *(span or {}).get("row_groups", [0, None]))
        elif kind in ("csv", "tsv"):
            yield from read_csv(path, lines(path), fields, "," if kind == "csv" else "\t")
        elif kind == "json":
            text = "".join(part for _, part, _ in lines(path))
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise Refused(f"{path}: line {e.lineno}: invalid JSON ({e.msg})")
            if not isinstance(records, list):
                raise Refused(f"{path}: expected a JSON array of objects")
            for i, obj in enumerate(records):
                yield doc_text(obj, fields, f"{path}: item {i}"), True
        elif kind == "jsonl":
            line, source = [], lines(path)
            for lineno, part, done in source:
                line.append(part)  # a JSON record is parsed whole
                if done:
                    text, line = "".join(line), []
                    if text.strip():
                        try:
                            obj = json.loads(text)
                        except json.JSONDecodeError as e:
                            raise Refused(f"{path}: {source.where(lineno)}: invalid JSON ({e.msg})")
                        yield doc_text(obj, fields, f"{path}: {source.where(lineno)}"), True
        elif doc_format == "blank":
            yield from blank_line_documents(lines(path, blank=True))
        else:
            for _, part, done in lines(path):
                yield part, done


def blank_line_documents(lines):
    open_doc, at_line_start = False, True
    for _, part, done in lines:
        if at_line_start and done and not part.strip():  # a blank line ends the document
            if open_doc:
                yield "", True
            open_doc = False
            continue
        if at_line_start and open_doc:
            yield "\n", False
        yield (part.rstrip("\r\n") if done else part), False
        open_doc, at_line_start = True, done
    if open_doc:
        yield "", True


def read_csv(path, lines, fields, delimiter):
    """One document per row of a CSV (or tab-separated) file whose first line names the columns: the
    --text_field columns joined by newlines. A quoted field may span lines; a record is parsed whole.
    `lines` is a Lines stream, so a decoding error names its line and byte offset."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the default 128 KB per field is too small for documents

    def whole_lines():
        line = []
        for _, part, done in lines:
            line.append(part)
            if done:
                yield "".join(line)
                line = []
    rows = csv.reader(whole_lines(), delimiter=delimiter)
    try:
        header = next(rows, [])
        missing = [k for k in fields if k not in header]
        if missing:
            raise Refused(f"{path}: no text column {missing[0]!r} in its first line (use --text_field; columns "
                          f"here: {', '.join(header) or 'none'})")
        at = [header.index(k) for k in fields]
        for row in rows:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise Refused(f"{path}: line {rows.line_num}: {len(row)} fields, the header has {len(header)}")
            yield "\n".join(row[i] for i in at), True
    except csv.Error as e:
        raise Refused(f"{path}: line {rows.line_num}: not valid CSV ({e})")


def parquet_file(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Refused(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow's own exception types
        raise Refused(f"{path}: not a readable parquet file ({(str(e).strip().splitlines() or [type(e).__name__])[0][:80]})")


def row_groups(path):
    """The row groups' metadata of a parquet file (what plan_slices cuts it by)."""
    meta = parquet_file(path).metadata
    return [meta.row_group(g) for g in range(meta.num_row_groups)]


def read_parquet(path, fields, first=0, end=None):
    """One document per row (its text fields joined by newlines), read one row group at a time, so
    memory holds one row group of the text columns, never the file; row groups first..end-1 only."""
    f = parquet_file(path)
    names = f.schema_arrow.names
    missing = [k for k in fields if k not in names]
    if missing:
        raise Refused(f"{path}: no text column {missing[0]!r} (use --text_field; columns here: {', '.join(names) or 'none'})")
    for g in range(first, min(f.num_row_groups, f.num_row_groups if end is None else end)):
        group = f.read_row_group(g, columns=fields)
        cols = [group.column(k).to_pylist() for k in fields]
        yield from (("\n".join(str(v) for v in row if v is not None), True) for row in zip(*cols))
