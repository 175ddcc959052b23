"""What the two-checkout scripts (compare_outputs.py, compare_trees.py) share: a checkout's root, its own compile
cache, and the environment a subprocess runs in so that it imports that checkout's cnnnumba and nothing else."""
import hashlib
import json
import os

THREAD_VARIABLES = ("CNNNUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def checkout_root(path):
    """The absolute root of a cnnnumba checkout; ValueError when `path` holds no cnnnumba package."""
    root = os.path.realpath(path)
    if not os.path.isfile(os.path.join(root, "cnnnumba", "__init__.py")):
        raise ValueError(f"{path} is not a cnnnumba checkout: {os.path.join(root, 'cnnnumba', '__init__.py')} "
                         "does not exist")
    return root


def parse_env(pairs, option):
    """["K=V", ...] from --env-old / --env-new as a dict; ValueError naming the option on a pair without "="."""
    environment = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"{option} expects NAME=VALUE, but got {pair!r}")
        environment[name] = value
    return environment


def default_cache_root():
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "cnnnumba", "tree-compare")


def cache_dir(cache_root, side, tree, extra_env):
    """The Numba cache folder of one side: its own per side, checkout and extra environment, kept between runs so
    that a second run starts warm (Numba and cnnnumba's own guard drop entries whose sources changed)."""
    key = hashlib.sha256(json.dumps([tree, sorted(extra_env.items())]).encode()).hexdigest()[:12]
    return os.path.join(cache_root, f"{side}-{key}")


def tree_environment(tree, cache, extra_env, threads=None):
    """os.environ with PYTHONPATH replaced by `tree`, both cache variables set to `cache` (CNNNUMBA_CACHE_DIR wins
    in cnnnumba; NUMBA_CACHE_DIR too, in case a tree reads only Numba's), the thread variables that `cnnnumba
    bench` sets when `threads` is given, then `extra_env` on top."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = tree
    environment["CNNNUMBA_CACHE_DIR"] = environment["NUMBA_CACHE_DIR"] = cache
    if threads is not None:
        environment.update({variable: str(threads) for variable in THREAD_VARIABLES})
    environment.update(extra_env)
    return environment
