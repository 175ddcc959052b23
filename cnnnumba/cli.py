"""The `cnnnumba` command line: train, export (to ONNX), info (and bench)."""
import argparse
import os
import platform
import sys

from ._argtypes import non_negative_int, positive_float, positive_int

DEFAULT_MODEL = {"digits": "small-cnn", "mnist": "lenet5", "cifar10": "cifar-cnn"}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


def _dataset_spec(text):
    name, _, path = text.partition(":")
    if name == "digits" and not path:
        return ("digits", None)
    if name in ("mnist", "cifar10"):
        if not path:
            raise argparse.ArgumentTypeError(f"{name} needs a folder: --dataset {name}:PATH")
        return (name, path)
    raise argparse.ArgumentTypeError(f"expected digits, mnist:PATH or cifar10:PATH, but got {text!r}")


def build_parser():
    from .models import MODELS

    parser = argparse.ArgumentParser(prog="cnnnumba", description="Train CNNs on the CPU with Numba kernels.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser("train", help="train a CNN (default: a small CNN on the bundled 8×8 digits)")
    train.add_argument("--model", choices=sorted(MODELS), help="model (default: small-cnn for digits, lenet5 for "
                                                               "mnist, cifar-cnn for cifar10)")
    train.add_argument("--dataset", type=_dataset_spec, default=("digits", None),
                       help="digits (bundled), mnist:PATH (IDX files) or cifar10:PATH (binary version)")
    train.add_argument("--epochs", type=positive_int, default=10)
    train.add_argument("--batch-size", type=positive_int, default=32,
                       help="images per step on each rank (under mpiexec -n N a step sees N times as many)")
    train.add_argument("--lr", type=positive_float, help="learning rate (default: 0.05 for sgd, 1e-3 for adam/adamw)")
    train.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default="adam")
    train.add_argument("--threads", type=positive_int, help="threads for the kernels (default: all cores, divided "
                                                            "among the ranks on this machine under mpiexec)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--checkpoint", metavar="PATH", help="save the training state here after every epoch")
    train.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --checkpoint")
    train.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy per epoch (needs matplotlib)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--eager", action="store_true",
                       help="run each step op by op instead of as a captured graph (the default)")

    export = commands.add_parser("export", help="write a model's weights (safetensors or checkpoint) as ONNX")
    export.add_argument("weights", metavar="WEIGHTS",
                        help="a .safetensors state dict or a checkpoint written by train --checkpoint")
    export.add_argument("--model", choices=sorted(MODELS), required=True)
    export.add_argument("--onnx", metavar="OUT", required=True, help="the ONNX file to write")
    export.add_argument("--image-size", type=positive_int, help="the example input's height and width (default: "
                                                                "224 for the ImageNet models, else the model's own)")
    export.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version (default: 17)")

    commands.add_parser("info", help="versions, threads, CPU features and the compile cache")

    from .bench.command import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


def _load_dataset(name, path):
    from . import data

    if name == "digits":
        return data.load_digits()
    if name == "mnist":
        return data.load_mnist(path)
    return data.load_cifar10(path)


def _make_optimizer(name, parameters, lr):
    from . import optim

    if name == "sgd":
        return optim.SGD(parameters, lr=lr, momentum=0.9)
    if name == "adam":
        return optim.Adam(parameters, lr=lr)
    return optim.AdamW(parameters, lr=lr)


def _join_process_group():
    """(rank, world size): the MPI process group when mpiexec started several ranks, else (0, 1)."""
    from . import distributed as dist

    if dist.launcher_world_size() == 1:
        return 0, 1
    dist.init_process_group()
    return dist.get_rank(), dist.get_world_size()


def _threads_per_rank():
    """This machine's cores divided among the ranks running on it (2 ranks must not run 4 threads on 2 cores)."""
    from . import distributed as dist

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // dist.get_local_world_size())


def run_train(args, parser):
    """`cnnnumba train`; under `mpiexec -n N` every rank runs it and training is data-parallel."""
    try:
        rank, world = _join_process_group()
    except ImportError as error:
        parser.error(str(error))
    if world == 1:
        return _train(args, parser, rank, world)
    from . import distributed as dist

    try:
        return _train(args, parser, rank, world)
    except KeyboardInterrupt:
        # rank 0 has written its checkpoint (fit saves before the interrupt leaves it)
        if rank == 0:
            print("interrupted", file=sys.stderr)
        dist.exit_after_interrupt(130)
    except SystemExit as error:  # a usage error on one rank must not leave the others waiting for it
        if error.code:
            dist.abort(error.code if isinstance(error.code, int) else 2)
        raise


def _train(args, parser, rank, world):
    import cnnnumba as cn
    from . import train as training
    from .data import DataLoader, DistributedSampler
    from .models import build_model
    from .nn.parallel import DistributedDataParallel

    say = print if rank == 0 else (lambda *args, **kwargs: None)
    threads = args.threads
    if threads is None and world > 1 and not os.environ.get("CNNNUMBA_NUM_THREADS"):
        threads = min(_threads_per_rank(), cn.get_num_threads())
    if threads is not None:
        try:
            cn.set_num_threads(threads)
        except ValueError as error:
            parser.error(f"argument --threads: {error}")
    cn.manual_seed(args.seed)
    name, path = args.dataset
    try:
        train_set, test_set = _load_dataset(name, path)
    except (OSError, ValueError) as error:
        parser.error(f"argument --dataset: {error}")
    image = train_set[0][0]
    labels = train_set.labels if hasattr(train_set, "labels") else [train_set[i][1] for i in range(len(train_set))]
    num_classes = int(max(labels)) + 1
    model_name = args.model or DEFAULT_MODEL[name]
    try:
        model = build_model(model_name, in_channels=image.shape[0], num_classes=num_classes, image_size=image.shape[-1])
    except ValueError as error:
        parser.error(f"argument --model: {error}")
    optimizer = _make_optimizer(args.optimizer, model.parameters(), args.lr or DEFAULT_LR[args.optimizer])
    if world == 1:
        train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
        test_loader = DataLoader(test_set, batch_size=256)
    else:  # each rank its share: of every epoch's shuffled order, and of the test set (unpadded)
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
        train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, seed=args.seed)
        test_loader = DataLoader(test_set, batch_size=256, sampler=range(rank, len(test_set), world))
    start_epoch, history = 0, []
    if args.resume:  # every rank reads it (on a cluster, from a shared file system)
        try:
            start_epoch, history = training.load_training_state(args.resume, model, optimizer, None, train_loader)
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"argument --resume: cannot resume from {args.resume}: {error}")
        say(f"resumed from {args.resume} after epoch {start_epoch}")
    parameters = sum(p.size for p in model.parameters())
    threads = f"{cn.get_num_threads()} threads"
    layout = f"batch {args.batch_size}, {threads}" if world == 1 else \
        f"batch {args.batch_size} per rank ({args.batch_size * world} per step), {world} ranks × {threads}"
    say(f"training {model_name} ({parameters:,} parameters) on {name}: {len(train_set)} train / {len(test_set)} "
        f"test images, {args.optimizer} lr {args.lr or DEFAULT_LR[args.optimizer]}, {layout}", flush=True)
    trained = model if world == 1 else DistributedDataParallel(model)
    try:
        history = training.fit(trained, optimizer, train_loader, args.epochs, test_loader=test_loader,
                               checkpoint_path=args.checkpoint if rank == 0 else None, start_epoch=start_epoch,
                               history=history, progress=not args.no_progress and rank == 0, eager=args.eager,
                               log=say)
    except KeyboardInterrupt:
        if world > 1:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except training.NonFiniteLossError as error:
        print(f"cnnnumba: error: {error}", file=sys.stderr)
        if world > 1:  # the other ranks would wait for this one in the next all-reduce
            from . import distributed as dist

            dist.abort(1)
        return 1
    if args.plot and history and rank == 0:
        training.plot_history(history, args.plot)
        say(f"plot written to {args.plot}")
    result = training.evaluate(model, test_loader, reduce_across_ranks=world > 1)
    say(f"test accuracy: {result['accuracy']:.4f}")
    return 0


# the example input's size where the model has no ImageNet-style default of 224
EXPORT_IMAGE_SIZE = {"lenet5": 28, "cifar-cnn": 32, "resnet20": 32, "small-cnn": 8}


def run_export(args, parser):
    import numpy as np

    import cnnnumba as cn
    from .models import build_model

    try:
        state = cn.load(args.weights)
    except (OSError, ValueError) as error:
        parser.error(f"argument WEIGHTS: {error}")
    if isinstance(state, dict) and state.get("kind") is not None and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint: its model's state dict
    image_size = args.image_size or EXPORT_IMAGE_SIZE.get(args.model, 224)
    # the model's first conv and last linear weight, found by name (files need not keep the model's key order),
    # give its input channels and classes
    reference = build_model(args.model, in_channels=3, num_classes=10, image_size=image_size).state_dict()
    first_conv = next(key for key, value in reference.items() if value.ndim == 4)
    head = [key for key, value in reference.items() if value.ndim == 2][-1]
    if not isinstance(state, dict) or any(getattr(state.get(k), "ndim", 0) != reference[k].ndim
                                          for k in (first_conv, head)):
        parser.error(f"argument WEIGHTS: {args.weights} holds no {args.model} state dict (no {first_conv!r} and "
                     f"{head!r} weights)")
    in_channels, num_classes = state[first_conv].shape[1], state[head].shape[0]
    try:
        model = build_model(args.model, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as error:
        parser.error(f"argument WEIGHTS: cannot load {args.weights} into {args.model}: {error}")
    example = np.zeros((1, in_channels, image_size, image_size), dtype=next(iter(model.parameters())).dtype)
    try:
        cn.onnx.export(model, example, args.onnx, opset_version=args.opset)
    except (OSError, ValueError, ImportError) as error:
        print(f"cnnnumba: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.model} ({in_channels} channels, {num_classes} classes, {image_size}×{image_size} example) "
          f"written to {args.onnx}")
    return 0


def run_info():
    import llvmlite.binding as llvm
    import numba
    import numpy as np

    import cnnnumba as cn
    from .kernels._runtime.machine import target_machine
    from .kernels.conv2d.tiles import tile_shapes
    from .kernels.elementwise import relu_forward

    probe = np.zeros(1 << 20, dtype=np.float32)
    relu_forward(probe, probe)  # a parallel kernel must run before Numba can name its threading layer
    features = sorted(f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+"))
    simd = [f for f in features if f.startswith(("sse", "avx", "fma", "neon", "sve"))]
    cache = numba.config.CACHE_DIR or os.path.join(os.path.dirname(cn.__file__), "**", "__pycache__")
    print(f"cnnnumba {cn.__version__}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}")
    print(f"threads: {cn.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}; threading layer: "
          f"{numba.threading_layer()}")
    print(f"cpu: {llvm.get_host_cpu_name()}; SIMD: {' '.join(simd) or 'none detected'}")
    machine = target_machine()
    restricted = " (restricted by NUMBA_CPU_NAME)" if numba.config.CPU_NAME else ""
    print(f"kernels compiled for: {machine.tier} ({machine.cpu}{restricted}): {machine.vector_bits}-bit vectors, "
          f"{machine.lanes} float32 lanes, {machine.registers} vector registers, FMA {'yes' if machine.fma else 'no'}")
    shapes = tile_shapes()
    print("register tiles: forward " + ", ".join(f"{p}x{c}" for p, c in shapes["forward"])
          + "; weight gradient " + ", ".join(f"{r}x{c}" for r, c in shapes["weight"])
          + f"; few-channel {shapes['few-channel'][0][0]} pixels"
          + "".join(f"; few-pixel products {p}x{c}" for p, c in shapes["product"])
          + "".join(f"; short rows {p}x{c}" for p, c in shapes["short row"])
          + "".join(f"; short weight gradient {r}x{c}" for r, c in shapes["short weight"])
          + ("; first-layer weight gradient " + " + ".join(f"{r}x{c}" for r, c in shapes["kernel row"])
             if shapes["kernel row"] else ""))
    print(f"numba cache: {cache}")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return run_train(args, parser)
    if args.command == "export":
        return run_export(args, parser)
    if args.command == "bench":
        from .bench.command import run as run_bench

        return run_bench(args, parser)
    return run_info()
