"""
Files that are never seen half-written: every output is written under a new temporary name in its
own directory and renamed onto its final name when it is complete, so a reader (or a later step)
sees the old file or the new one, never a part. A kill, an interrupt or a full disk leaves the old
file and removes the temporary one.
"""
import contextlib, hashlib, json, os, secrets, shutil


def temp_name(path):
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")


def is_temp(name, final_names):
    """Whether a file name is one of our temporary names for one of `final_names`."""
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in final_names)


def new_temp(path):
    """A new, empty file next to `path` under an unpredictable name, created exclusively: a file or a
    link someone placed there is never followed or overwritten (O_EXCL), and the mode is the
    process' usual one (0o666 less the umask)."""
    while True:
        tmp = temp_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path):
    """Yield a new temporary file next to `path` to write; when the block succeeds it replaces `path`
    in one rename (after an fsync, so the data is on disk before the name points at it). On any error
    or interrupt the temporary file is removed, and an OSError names `path`."""
    tmp = new_temp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and not e.filename:
            e.filename = path  # a write error (a full disk) names the file it was writing
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """The same for a directory: yield a new temporary directory beside `path`; on success it
    replaces `path` (an older one is removed first), so a directory that exists is complete."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = temp_name(os.path.join(parent, os.path.basename(path)))
    os.mkdir(tmp)  # exclusive: fails rather than follow something placed there
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path, obj):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def copy_file(src, dst):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
