"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed over the target."""
import os
import tempfile


def _fsync_directory(folder):
    """Make the rename itself durable; some platforms and file systems cannot open a directory, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode(target):
    """The permissions the file would have had if written directly (mkstemp makes files 0600)."""
    try:
        return os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomically(path, write):
    """Call `write(file)` on a new binary file that replaces `path` only once it is whole on disk.

    The file is written next to `path` under a temporary name, flushed, fsynced and then renamed over `path`,
    so a crash at any moment leaves either the previous file or the new one, whole; an exception from `write`
    leaves the previous file and removes the temporary one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path}: it is a folder")
    mode = _new_file_mode(path)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(folder)
