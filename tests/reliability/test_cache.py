"""Numba's compile cache under faults, each in fresh processes: unwritable directories, concurrent compilers,
truncated cache files."""
import os
import stat
import subprocess
import sys
import textwrap

import pytest

POOL_PROGRAM = textwrap.dedent("""
    import json, warnings
    warnings.simplefilter("always")
    import numba
    import numpy as np
    import cnnnumba as cn
    from cnnnumba import functional as F
    from cnnnumba.kernels import pool2d
    x = cn.Tensor(np.arange(2 * 3 * 6 * 6, dtype=np.float64).reshape(2, 3, 6, 6) % 7, requires_grad=True)
    y = F.max_pool2d(x, 2)
    y.sum().backward()
    kernels = [k for k in vars(pool2d).values() if hasattr(k, "stats")]
    print(json.dumps({"result": [float(y.data.sum()), float(x.grad.sum())],
                      "chosen": cn.kernels._runtime.environment.CACHE_DIR, "numba": numba.config.CACHE_DIR,
                      "hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
                      "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels)}))
""")
CONFIG_PROGRAM = textwrap.dedent("""
    import json, warnings
    warnings.simplefilter("always")
    import numba
    import cnnnumba as cn
    print(json.dumps({"chosen": cn.kernels._runtime.environment.CACHE_DIR, "numba": numba.config.CACHE_DIR}))
""")
EXPECTED = [249.0, 54.0]
KERNELS_CALLED = 2  # the forward and backward max-pool kernels the dispatchers chose; helpers compile into them


def _environment(tmp_path, **variables):
    # NUMBA_BOUNDSCHECK too: the caller's setting would make the "unchecked" runs checked ones
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "CNNNUMBA_CACHE_DIR",
                                                             "NUMBA_BOUNDSCHECK")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), TMPDIR=str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    env.update(variables)
    return env


def _start(env, program=POOL_PROGRAM):
    return subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process):
    import json

    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _run(env, program=POOL_PROGRAM):
    return _finish(_start(env, program))


def _cache_files(folder):
    return sorted(p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc"))


def _not_a_directory(tmp_path):
    """A cache path that cannot be created even by root: its parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return str(blocker / "cache")


def test_a_writable_cnnnumba_cache_dir_is_used(tmp_path):
    folder = tmp_path / "cache"
    report, err = _run(_environment(tmp_path, CNNNUMBA_CACHE_DIR=str(folder)))
    assert report["result"] == EXPECTED and report["chosen"] == report["numba"] == str(folder)
    assert "RuntimeWarning" not in err
    assert _cache_files(folder)


@pytest.mark.parametrize("variable, program", [("CNNNUMBA_CACHE_DIR", POOL_PROGRAM),
                                               ("NUMBA_CACHE_DIR", CONFIG_PROGRAM)],
                         ids=["CNNNUMBA_CACHE_DIR", "NUMBA_CACHE_DIR"])
def test_an_unwritable_cache_dir_falls_back_with_a_warning(tmp_path, variable, program):
    unwritable = _not_a_directory(tmp_path)
    report, err = _run(_environment(tmp_path, **{variable: unwritable}), program)
    fallback = str(tmp_path / "xdg" / "cnnnumba" / "numba")
    assert f"{variable}='{unwritable}' is not writable (Not a directory); cnnnumba caches its compiled kernels " \
           f"in {fallback} instead" in err
    assert report["chosen"] == report["numba"] == fallback
    if program is POOL_PROGRAM:
        assert report["result"] == EXPECTED and _cache_files(tmp_path / "xdg")


def test_with_no_writable_user_cache_the_fallback_is_a_private_temp_dir(tmp_path):
    env = _environment(tmp_path, CNNNUMBA_CACHE_DIR=_not_a_directory(tmp_path))
    env["XDG_CACHE_HOME"] = _not_a_directory(tmp_path / "tmp")
    report, err = _run(env, CONFIG_PROGRAM)
    private = tmp_path / "tmp" / f"cnnnumba-numba-cache-{os.getuid()}"
    assert report["chosen"] == report["numba"] == str(private) and f"in {private} instead" in err
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700


def test_a_temp_dir_others_can_write_is_never_used(tmp_path):
    shared = tmp_path / "tmp" / f"cnnnumba-numba-cache-{os.getuid()}"
    shared.mkdir(parents=True)
    os.chmod(shared, 0o777)
    env = _environment(tmp_path, CNNNUMBA_CACHE_DIR=_not_a_directory(tmp_path))
    env["XDG_CACHE_HOME"] = _not_a_directory(tmp_path / "tmp")
    report, err = _run(env, CONFIG_PROGRAM)
    assert "and no fallback directory is writable" in err and report["chosen"] is None


def test_numba_imported_before_cnnnumba_still_gets_the_fallback(tmp_path):
    program = "import numba\n" + CONFIG_PROGRAM
    report, err = _run(_environment(tmp_path, NUMBA_CACHE_DIR=_not_a_directory(tmp_path)), program)
    assert report["numba"] == report["chosen"] == str(tmp_path / "xdg" / "cnnnumba" / "numba")


def test_truncated_index_and_data_files_are_recompiled_and_rewritten(tmp_path):
    folder = tmp_path / "cache"
    env = _environment(tmp_path, CNNNUMBA_CACHE_DIR=str(folder))
    first, _ = _run(env)
    assert first["misses"] > 0
    # the index of the forward kernel the dispatcher chose and the code of the backward one (whichever variants)
    damaged = [p for p in _cache_files(folder) if (p.name.startswith("pool2d._max_pool2d_forward") and
                                                   p.suffix == ".nbi") or
               (p.name.startswith("pool2d._max_pool2d_backward") and p.suffix == ".nbc")]
    assert len(damaged) == 2, [p.name for p in _cache_files(folder)]
    for path in damaged:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    second, err = _run(env)
    assert second["result"] == EXPECTED
    assert err.count("ignoring a corrupt Numba cache file") >= 2 and "the kernel is compiled again" in err
    for path in damaged:
        assert str(path) in err
    third, err = _run(env)
    assert "corrupt" not in err and third["misses"] == 0 and third["hits"] == KERNELS_CALLED


def test_several_processes_compiling_into_one_empty_cache_at_once(tmp_path):
    folder = tmp_path / "cache"
    env = _environment(tmp_path, CNNNUMBA_CACHE_DIR=str(folder))
    processes = [_start(env) for _ in range(3)]
    reports = [_finish(p)[0] for p in processes]
    assert all(r["result"] == EXPECTED for r in reports)
    assert not [p for p in folder.rglob("*") if ".tmp." in p.name]  # Numba's temporary files were all renamed
    after, err = _run(env)
    assert after["misses"] == 0 and after["hits"] == KERNELS_CALLED, err


def test_an_entry_goes_stale_when_any_kernel_source_or_the_bounds_check_changes(tmp_path):
    # Numba checks only the time stamp of a kernel's own file. The max-pool kernels' file stays as it is here; the
    # compile flags' file (kernels/_runtime/jit.py, in a subpackage) changes, as it did when float reassociation was
    # dropped: entries from before must not load (they gave other weights than fresh ones). The reference twins
    # are outside the digest: editing one must not recompile the kernels.
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    package = tmp_path / "copy" / "cnnnumba"
    shutil.copytree(os.path.join(root, "cnnnumba"), package, ignore=shutil.ignore_patterns("__pycache__"))
    env = _environment(tmp_path, CNNNUMBA_CACHE_DIR=str(tmp_path / "cache"))
    program = ("import sys\nsys.path.insert(0, %r)\n" % str(tmp_path / "copy") + POOL_PROGRAM
               + "\nassert cn.__file__.startswith(%r), cn.__file__\n" % str(package))
    first, _ = _run(env, program)
    second, _ = _run(env, program)
    assert (first["hits"], second["hits"], second["misses"]) == (0, KERNELS_CALLED, 0)
    with open(package / "reference" / "__init__.py", "a") as source:
        source.write("# a change to a test oracle\n")
    after_oracle, _ = _run(env, program)
    assert (after_oracle["hits"], after_oracle["misses"]) == (KERNELS_CALLED, 0)
    with open(package / "kernels" / "_runtime" / "jit.py", "a") as source:
        source.write("# a change to the compile flags' file\n")
    third, _ = _run(env, program)
    fourth, _ = _run(env, program)
    assert (third["hits"], third["misses"]) == (0, KERNELS_CALLED)
    assert (fourth["hits"], fourth["misses"]) == (KERNELS_CALLED, 0)
    assert third["result"] == fourth["result"] == EXPECTED
    # Numba's own key ignores NUMBA_BOUNDSCHECK too: bounds-checked kernels are compiled, not the unchecked loaded
    checked, _ = _run(dict(env, NUMBA_BOUNDSCHECK="1"), program)
    assert (checked["hits"], checked["misses"], checked["result"]) == (0, KERNELS_CALLED, EXPECTED)
