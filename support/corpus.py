"""
Reading a corpus: files, directories and globs of .txt / .jsonl / .json / .csv / .tsv / .parquet,
optionally gzipped, as a stream of documents in a fixed order, in bounded memory (a line of any
length arrives in parts; a JSON or CSV record is parsed whole; parquet is read one row group at a
time; a .json array is the one format read whole). Bad input is one line naming the file and the
line or byte offset.
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


def read_lines(path, encoding, read_bytes):
    """Yield (line_number, text, line_done) of a (possibly gzipped) text file. A line longer than
    read_bytes arrives in several parts (line_done False until its last part), so one huge line is
    never held in memory whole. Bad bytes name the file, line and byte offset."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, lineno = 0, 1
    with opener(path, "rb") as f:
        head = f.read(8192)  # sniff first: a binary file must not be reported as a decoding error
        if b"\0" in head:
            raise Refused(f"{path}: binary data (NUL byte at byte offset {head.index(0)}); expected text")
        f.seek(0)
        done = True
        while raw := f.readline(read_bytes):
            # a part is a line's last when it ends the line or the file (readline stops short of the limit)
            done = raw.endswith(b"\n") or len(raw) < read_bytes
            nul = raw.find(b"\0")
            if nul >= 0:
                raise Refused(f"{path}: line {lineno}: binary data (NUL byte at byte offset "
                              f"{offset + nul}); expected text")
            held = len(decoder.getstate()[0])  # bytes of a character cut at the previous part's end
            try:
                text = decoder.decode(raw, final=done)
            except UnicodeDecodeError as e:
                raise Refused(f"{path}: line {lineno}, byte offset {offset - held + e.start}: not valid "
                              f"{encoding} (try --encoding gb18030 or the file's real encoding)")
            yield lineno, text, done
            offset += len(raw)
            lineno += done
        if not done:  # the file ended exactly at a part's limit, inside a line
            try:
                text = decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise Refused(f"{path}: line {lineno}: the file ends inside a {encoding} character")
            yield lineno, text, True


def doc_text(obj, fields, where):
    """Join the text fields of one JSON record ('title,content' -> title + newline + content)."""
    if not isinstance(obj, dict):
        raise Refused(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj]
    if missing:
        raise Refused(f"{where}: no text field {missing[0]!r} (use --text_field; "
                      f"fields here: {', '.join(map(str, obj)) or 'none'})")
    return "\n".join(str(obj[k]) for k in fields if obj[k] is not None)


def read_documents(files, fields, encoding, doc_format, read_bytes, readers=None):
    """Yield every document as (part, last) pairs, file after file, in a fixed order: a document is
    one or more consecutive parts, the last with last=True. What a document is:
      .txt, doc_format "line":  one line (a long line arrives in parts);
      .txt, doc_format "blank": consecutive non-blank lines, joined by newlines; a blank line (or the
                                end of the file) ends the document (Google BERT's pre-training format);
      .jsonl / .json / .csv / .tsv / .parquet: one record (a CSV row under a header line), its text
                                fields joined by newlines;
      a file in `readers` ({path: function(path, lines)}): what that function yields."""
    lines = lambda path: read_lines(path, encoding, read_bytes)  # noqa: E731
    for path in files:
        kind = file_kind(path) or "txt"  # a file named explicitly is read as text
        if readers and path in readers:
            yield from readers[path](lines(path))
        elif kind == "parquet":
            yield from read_parquet(path, fields)
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
            line = []
            for lineno, part, done in lines(path):
                line.append(part)  # a JSON record is parsed whole
                if done:
                    text, line = "".join(line), []
                    if text.strip():
                        try:
                            obj = json.loads(text)
                        except json.JSONDecodeError as e:
                            raise Refused(f"{path}: line {lineno}: invalid JSON ({e.msg})")
                        yield doc_text(obj, fields, f"{path}: line {lineno}"), True
        elif doc_format == "blank":
            yield from blank_line_documents(lines(path))
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
    `lines` is read_lines' stream, so a decoding error names its line and byte offset."""
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


def read_parquet(path, fields):
    """One document per row (its text fields joined by newlines), read one row group at a time, so
    memory holds one row group of the text columns, never the file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Refused(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's own exception types
        raise Refused(f"{path}: not a readable parquet file ({(str(e).strip().splitlines() or [type(e).__name__])[0][:80]})")
    names = f.schema_arrow.names
    missing = [k for k in fields if k not in names]
    if missing:
        raise Refused(f"{path}: no text column {missing[0]!r} (use --text_field; columns here: {', '.join(names) or 'none'})")
    for g in range(f.num_row_groups):
        group = f.read_row_group(g, columns=fields)
        cols = [group.column(k).to_pylist() for k in fields]
        yield from (("\n".join(str(v) for v in row if v is not None), True) for row in zip(*cols))
