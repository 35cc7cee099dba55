"""
One way to fail. A bad setting, bad input or a fault (a full disk, a damaged file) ends the program
with one line on stderr that names the file, line or value at fault, and a non-zero exit status:
no traceback, and nothing half-written that a later step would trust (files.py sees to that).
"""
import functools


class Refused(SystemExit):
    """The whole report is the message: one line. It is a SystemExit, so wherever it is raised
    Python prints the line and exits with status 1 (not a traceback); `script` adds the program's
    name in front."""


def why(e):
    """The cause of an error in a few words (a library's write error often wraps the OSError)."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause.strerror or str(cause)
    return (str(e).strip().split(". ")[0].splitlines() or [type(e).__name__])[0]  # the first sentence


def script(prog):
    """Decorator for a script's main(argv): a refusal, a BadFile, or an OSError that escaped (a full
    disk, a read-only or vanished directory) becomes `prog: error: <one line>` and exit status 1."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except Refused as e:
                if isinstance(e.code, str) and not e.code.startswith(f"{prog}: error: "):
                    raise Refused(f"{prog}: error: {e.code}") from None
                raise
            except BadFile as e:
                raise Refused(f"{prog}: error: {e}") from None
            except OSError as e:  # with no file name, the message names it (e.g. FileNotFoundError(msg))
                where = f"{e.filename}: {why(e)}" if e.filename else str(e)
                raise Refused(f"{prog}: error: {where}") from None
        return run
    return wrap


class BadFile(ValueError):
    """A file that is not what it should be (a config, weights or tokenizer that does not fit).
    Library code raises it as a ValueError; a script reports it in one line like a refusal."""


def in_worker(fn):
    """Decorator for what a pool worker runs: a refusal or an OSError comes back to the parent as a
    BadFile carrying its one line (a SystemExit would end the worker and leave the pool waiting)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Refused as e:
            raise BadFile(str(e.code)) from None
        except OSError as e:
            raise BadFile(f"{e.filename}: {why(e)}" if e.filename else why(e)) from None
    return run
