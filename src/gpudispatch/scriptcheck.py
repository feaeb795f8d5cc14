"""Whether a dropped file can run, and how: the checks made before a job is started."""

from __future__ import annotations

import os
import re
import stat

from gpudispatch.job import HEADER_MAX_BYTES


class ScriptRejected(Exception):
    """A script that cannot run correctly; the message is the reason recorded."""


class Launch:
    """How to run a checked script: the argv, and a note for the log when it is unusual.
    A plain class, not a dataclass: ``status`` imports this module (for :func:`read_head`)
    and must not pay for ``dataclasses``."""

    __slots__ = ("argv", "note", "inline")

    def __init__(self, argv: list[str], note: str | None = None, inline: bool = False) -> None:
        self.argv = argv
        self.note = note
        self.inline = inline  # plain /bin/sh that its monitor may source itself

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Launch:
            return NotImplemented
        return ((self.argv, self.note, self.inline)
                == (other.argv, other.note, other.inline))  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # argv is a list

    def __repr__(self) -> str:
        return f"Launch(argv={self.argv!r}, note={self.note!r}, inline={self.inline!r})"

    @property
    def plain_sh(self) -> bool:
        """Run by ``/bin/sh`` with no options: the monitor may source it in a subshell."""
        return len(self.argv) == 2 and self.argv[0] == "/bin/sh"


# What could take the shell from its monitor, were the script sourced by the monitor
# itself (``monitor.INLINE_MONITOR_SCRIPT``): replace it (``exec``), change its traps, run
# code it cannot see (``eval``, ``.``, ``source``), redefine the commands its EXIT trap
# runs (functions, aliases), stop it from running them (``set`` but -e, -u, -x), limit
# the file it appends to (``ulimit``), or touch the values it kept. Matched on the text
# but its comment lines, strings too: a false match only costs the fork that inline
# saves. (A line that starts with ``#`` is code only inside a string or here-document,
# where a word runs only in a ``$(...)``: a subshell, which cannot take the monitor's.)
INLINE_UNSAFE = re.compile(
    rb"\b(?:exec|trap|eval|source|alias|ulimit|function)\b"
    rb"|__gpudispatch"
    rb"|\(\s*\)"  # a function definition: name ()
    rb"|(?:^|[;&|(\s])\.\s"  # . FILE
    rb"|\bset\b(?!\s+-[eux]+(?:[ \t]*(?:$|[;&|#\n])))",
    re.MULTILINE)


# The line ``submit`` writes to load the submitting shell's environment (``control``), and
# what that file may hold to be sourced inline: ``export NAME='value'`` lines, as
# ``control.env_text`` writes them (values quoted by ``shlex.quote``), and comments.
_ENV_LINE = re.compile(
    rb"^\. '?(/[^'\n]*/\.gpudispatch/env/[0-9a-f]+\.env)'? \|\| exit 1$", re.MULTILINE)
_EXPORTS_ONLY = re.compile(
    rb"(?:#[^\n]*\n|export (?!__gpudispatch)[A-Za-z_]\w*="
    rb"""(?:'[^']*'|"'"|[\w@%+=:,./-])*\n)*""")
_ENV_FILE_MAX_BYTES = 1 << 20
_exports_only: dict[tuple[str, int, int, int], bool] = {}  # (path, inode, size, mtime)


def inline_safe(text: bytes) -> bool:
    """Whether a plain ``/bin/sh`` script may be sourced by its monitor (see above)."""
    code = b"\n".join(line for line in text.split(b"\n")
                      if not line.lstrip().startswith(b"#"))
    for env_file in _ENV_LINE.findall(code):
        if not _env_file_safe(env_file.decode(errors="surrogateescape")):
            return False
    return INLINE_UNSAFE.search(_ENV_LINE.sub(b"", code)) is None


def _env_file_safe(path: str) -> bool:
    """Whether a kept environment holds exports alone (read once per version of it)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _exports_only:
        if len(_exports_only) > 64:
            _exports_only.clear()
        try:
            with open(path, "rb") as fh:
                data = fh.read(_ENV_FILE_MAX_BYTES + 1)
        except OSError:
            return False
        _exports_only[key] = (len(data) <= _ENV_FILE_MAX_BYTES
                              and _EXPORTS_ONLY.fullmatch(data) is not None)
    return _exports_only[key]


def shebang_argv(head: bytes) -> list[str] | None:
    """The interpreter a ``#!`` line names, split as Linux does (one optional argument)."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="surrogateescape").strip()
    if not line:
        return None
    interp, _, arg = line.partition(" ")
    arg = arg.strip()
    return [interp, arg] if arg else [interp]


def read_head(path: str, st: os.stat_result) -> bytes:
    """The header of a regular file (nothing else is opened: a FIFO would block)."""
    if not stat.S_ISREG(st.st_mode):
        return b""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return os.read(fd, HEADER_MAX_BYTES)
    finally:
        os.close(fd)


ALLOW_OTHERS_FLAG = "--allow-other-users"


def user_name(uid: int) -> str:
    """``alice`` for a uid with a name, else ``uid 1001``."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def owner_problem(st: os.stat_result, allow_others: bool) -> str | None:
    """Why a script may not run because of who owns it, or None.

    A job runs as the dispatcher's user: a script another user dropped into a queue they
    may write to would run with the dispatcher's rights (root's, often). Only the
    dispatcher's user's and root's scripts run, unless ``run`` was told otherwise.
    """
    me = os.geteuid()
    if allow_others or st.st_uid in (me, 0):
        return None
    owner = user_name(st.st_uid)
    owner = owner if owner.startswith("uid ") else f"user {owner} (uid {st.st_uid})"
    return (f"is owned by {owner}, not by the dispatcher's user {user_name(me)}; start run "
            f"with {ALLOW_OTHERS_FLAG} to run others' scripts")


def content_problem(st: os.stat_result, head: bytes) -> str | None:
    """What makes a file no script to run, wherever it runs (here or on Slurm), or None.
    ``st`` is its ``lstat``; ``head`` its first bytes."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink; copy the script into the queue instead of linking it"
    if not stat.S_ISREG(st.st_mode):
        kinds = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)",
                 stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
        kind = kinds.get(stat.S_IFMT(st.st_mode), "a special file")
        return f"is {kind}, not a regular file with a script"
    if st.st_size == 0:
        return "is empty"
    if b"\0" in head:
        return "is a binary file, not a shell script"
    if b"\r\n" in head:
        return "has CRLF (Windows) line endings, which break /bin/sh; convert it with dos2unix"
    return None


def check_script(path: str, st: os.stat_result, head: bytes | None = None) -> Launch:
    """Decide how to run ``path``, or raise :class:`ScriptRejected` with the reason.

    ``st`` is its ``lstat``; ``head`` its first bytes when already read. Never opens
    anything but a regular file, so a FIFO named ``x.sh`` cannot block us.
    """
    if stat.S_ISREG(st.st_mode) and st.st_size and head is None:
        head = read_head(path, st)
    problem = content_problem(st, head or b"")
    if problem:
        raise ScriptRejected(problem)
    assert head is not None
    interp = shebang_argv(head)
    if interp is not None and not os.access(interp[0], os.X_OK):
        raise ScriptRejected(
            f"names {interp[0]} in its #! line, which is not an executable file here"
        )
    by_sh = interp is None or interp == ["/bin/sh"]  # (only such a script runs inline)
    inline = by_sh and st.st_size <= len(head) and inline_safe(head)  # (all of it read)
    if st.st_mode & stat.S_IXUSR:
        if interp is None:  # exec() would refuse it; a shell runs it with /bin/sh
            return Launch(["/bin/sh", path],
                          note="executable without a #! line; running it with /bin/sh",
                          inline=inline)
        if interp == ["/bin/sh"]:
            # what exec() would do, one exec shorter
            return Launch(["/bin/sh", path], inline=inline)
        return Launch([path])
    argv = interp or ["/bin/sh"]
    return Launch([*argv, path], note=f"not executable; running it with {' '.join(argv)}",
                  inline=inline)
