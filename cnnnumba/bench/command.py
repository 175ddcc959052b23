"""`cnnnumba bench`: its arguments, and the run that prints the table and writes the JSON and the plot."""
import importlib.util
import os
import sys

from .._argtypes import non_negative_int, positive_int
from .isa import TIERS
from .runners import IMAGENET_MODELS, MODEL_INPUTS

# --quick leaves ResNet-20 out: its six runs (three frameworks, two modes) alone take about a minute here
DEFAULTS = {"models": ["lenet5", "cifar-cnn", "resnet20"], "batch_sizes": [64, 256], "modes": ["train", "inference"],
            "steps": 20, "warmup": 3, "peak_size": 2048, "peak_repeats": 10}
QUICK = {"models": ["lenet5", "cifar-cnn"], "batch_sizes": [64], "modes": ["train", "inference"],
         "steps": 5, "warmup": 1, "peak_size": 1024, "peak_repeats": 5}
PROFILE_MODEL = "cifar-cnn"
# ResNet-18/34/50 and MobileNetV2 (only these chosen, no --batch-size): training and inference at their own batches
IMAGENET_BATCH_SIZES = {"train": [16, 32], "inference": [1, 16]}


def add_parser(commands):
    """Add the `bench` subcommand to the `cnnnumba` command's subparsers."""
    bench = commands.add_parser(
        "bench", help="compare training and inference speed with PyTorch (or --profile one training step)",
        description="Run the benchmark models in cnnnumba and PyTorch side by side (same weights, batches and "
                    "threads) and report ms/step, images/s, GFLOP/s and %% of the sgemm peak.")
    bench.add_argument("--models", nargs="+", choices=sorted(MODEL_INPUTS), metavar="MODEL",
                       help=f"models to run, of {', '.join(sorted(MODEL_INPUTS))} (default: lenet5 cifar-cnn "
                            f"resnet20; lenet5 cifar-cnn with --quick; {PROFILE_MODEL} for --profile)")
    bench.add_argument("--batch-size", nargs="+", type=positive_int, dest="batch_sizes", metavar="N",
                       help="batch sizes (default: 64 256; 64 with --quick or --profile; for resnet18/34/50 and "
                            "mobilenet_v2 alone, training at 16 32 and inference at 1 16)")
    bench.add_argument("--image-size", type=positive_int, metavar="N",
                       help="square image size for every model (default: each model's own: 224 for resnet18/34/50 "
                            "and mobilenet_v2, 28 for lenet5, 32 for cifar-cnn and resnet20)")
    bench.add_argument("--modes", nargs="+", choices=["train", "inference"],
                       help="training step and/or inference (default: both)")
    bench.add_argument("--steps", type=positive_int, help="timed steps; the median is reported (default: 20)")
    bench.add_argument("--warmup", type=non_negative_int, help="untimed steps after the first (default: 3)")
    bench.add_argument("--rounds", type=positive_int,
                       help="run everything this many times, interleaved, and keep for each run the round with "
                            "the least outside load (for shared machines; default: 1, 3 with --scaling)")
    bench.add_argument("--threads", type=positive_int, help="threads for every framework (default: all cores)")
    bench.add_argument("--eager", action="store_true",
                       help="run cnnnumba eagerly even where graph capture exists; with --profile, profile the eager "
                            "step op by op instead of the captured step node by node")
    bench.add_argument("--no-torch", action="store_true", help="run cnnnumba alone")
    bench.add_argument("--torch-compile", action="store_true", help="add torch.compile (where it works)")
    bench.add_argument("--quick", action="store_true",
                       help="a reduced set (LeNet-5 and the cifar-cnn, batch 64, 5 steps) that runs in about a minute")
    bench.add_argument("--profile", action="store_true",
                       help="instead of the comparison, break one captured training step into its graph nodes "
                            "(forward and backward ms, GFLOP/s, %% of peak), the fused update and the executor's "
                            "own time outside the nodes (--profile --eager: the eager step, op by op)")
    bench.add_argument("--scaling", action="store_true",
                       help="instead of the comparison, time pairs of cnnnumba steps, one on 1 thread and one on "
                            "--threads (default: all cores) back to back, in one process per round, NumPy's sgemm "
                            "likewise, and report the speed-up (the median over the pairs of each pair's ratio)")
    bench.add_argument("--isa", choices=TIERS, default="native",
                       help="restrict every worker, and every library in it (Numba, PyTorch with oneDNN and MKL, "
                            "OpenBLAS, NumPy), to this instruction set: a stand-in for a CPU of that tier; the "
                            "reports name the tier (default: native, the host's own, environment left as it is)")
    bench.add_argument("--seed", type=non_negative_int, default=0, help="weights and batches (default: 0)")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="write a bar chart PNG (needs matplotlib)")
    return bench


def settings_from(args, parser):
    """The run's settings from the arguments: explicit values over --quick's over the defaults."""
    import numba

    base = QUICK if args.quick or args.profile else DEFAULTS
    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    if threads > numba.config.NUMBA_NUM_THREADS:
        parser.error(f"argument --threads: expected at most {numba.config.NUMBA_NUM_THREADS} (the threads Numba "
                     f"can start), but got {threads}")
    if args.scaling and args.profile:
        parser.error("argument --scaling: --profile and --scaling are separate runs; give one of them")
    if args.scaling and threads < 2:
        parser.error(f"argument --scaling: compares 1 thread with more, but --threads is {threads}"
                     + ("" if args.threads else " (Numba started 1 thread: set NUMBA_NUM_THREADS)"))
    if args.plot and (args.profile or args.scaling):
        parser.error(f"argument --plot: the plot shows the comparison; leave it out with "
                     f"{'--profile' if args.profile else '--scaling'}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("argument --plot: matplotlib is not installed (pip install matplotlib)")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"argument {option}: the folder of {path} does not exist")
    if args.isa != "native":
        from . import isa

        try:
            isa.check(args.isa)
        except ValueError as error:
            parser.error(f"argument {error}")
    default_models = [PROFILE_MODEL] if args.profile else base["models"]
    models = args.models or default_models
    by_mode = IMAGENET_BATCH_SIZES if not args.batch_sizes and all(m in IMAGENET_MODELS for m in models) else None
    batch_sizes = args.batch_sizes or (by_mode["train"] if by_mode else base["batch_sizes"])
    return {"models": models, "batch_sizes": batch_sizes, "batch_sizes_by_mode": by_mode,
            "image_size": args.image_size,
            "modes": args.modes or base["modes"], "steps": args.steps or base["steps"],
            "warmup": base["warmup"] if args.warmup is None else args.warmup, "threads": threads,
            "rounds": args.rounds or (3 if args.scaling else 1), "eager": args.eager, "no_torch": args.no_torch,
            "torch_compile": args.torch_compile, "quick": args.quick, "seed": args.seed, "isa": args.isa,
            "distinct_batches": 4, "peak_size": base["peak_size"],
            "peak_repeats": base["peak_repeats"]}


def run(args, parser):
    from . import harness, report

    settings = settings_from(args, parser)
    if args.profile:
        document = harness.run_profile(settings)
        print(report.profile_table(document))
        failed = document["profile"]["status"] != "ok"
    elif args.scaling:
        document = harness.run_scaling(settings)
        print()
        print(report.scaling_table(document))
        # the sgemm is a reference: where NumPy's BLAS thread count cannot be set it is reported as failed, and
        # cnnnumba's own figures still stand
        failed = any(record["status"] != "ok" for record in document["scaling"] if record["model"] != "sgemm")
    else:
        document = harness.run_comparison(settings)
        print()
        print(report.comparison_table(document))
        failed = any(record["status"] != "ok" for record in document["records"])
    if args.json:
        report.write_json(document, args.json)
        print(f"results written to {args.json}")
    if args.plot:
        report.plot(document, args.plot)
        print(f"plot written to {args.plot}")
    if failed:
        print("cnnnumba: some runs failed; see the table", file=sys.stderr)
    return 1 if failed else 0
