"""``catlip train``, ``catlip export`` and ``catlip config``: runs, their weights, their configs.

The parsers and the commands; the work is :func:`engine.train.main`, :mod:`engine.checkpoint`'s
export and :mod:`engine.config_files`. Those that import torch and DeepSpeed (train, export) are
imported when their command runs, so ``catlip --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import add_train_arguments
from engine.config_files import ConfigFileError, find_config, list_configs


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``train``, ``export`` and ``config``."""
    p = sub.add_parser(
        "train",
        help="CatLIP pre-training (same as python -m engine.train)",
        description="Train on packed shards with DeepSpeed ZeRO. One process here; for several, use "
        "`python -m engine.launch --nproc_per_node N -m engine.train` (CPU, gloo) or `deepspeed --num_gpus N --module engine.train`.",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="consolidate a (ZeRO-partitioned) checkpoint into an export folder (timm / HF hub layout) "
        "or one fp32 safetensors file",
        description="Gather the fp32 weights of a DeepSpeed checkpoint (any ZeRO stage). --out DIR writes a "
        "folder as the Hugging Face hub and timm lay one out: config.json (timm's architecture, model_args and "
        "pretrained_cfg with the trainer's eval transform: input_size, interpolation, crop_pct, mean, std; "
        "label_names = the vocabulary's synsets, label_descriptions = their WordNet definitions; the "
        "vocabulary's SHA-256 and labeler), model.safetensors under timm's names, and the run's vocab.tsv; "
        "timm.create_model('local-dir:DIR', pretrained=True) and catlip.create_model_and_transforms(DIR) "
        "load it. --out FILE.safetensors writes one file: our state dict (loads into "
        "catlip.models.CatLIPModel) or, with --format timm, timm's names with timm_model and timm_kwargs "
        "in its metadata.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a checkpoint tag directory, the checkpoints/ dir or a run's out_dir (its newest complete one)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="a folder to write (config.json, model.safetensors, vocab.tsv), or a .safetensors file",
    )
    p.add_argument(
        "--ema",
        action="store_true",
        help="export the EMA of the weights (optim.ema_decay > 0; any ZeRO stage) instead of the weights",
    )
    p.add_argument(
        "--format",
        choices=("catlip", "timm"),
        help="of a .safetensors file: catlip: our state dict (loads into catlip.models.CatLIPModel); timm: "
        "timm's key names, with timm_model and timm_kwargs in the safetensors metadata (default catlip). "
        "A folder is always timm's layout",
    )
    p.add_argument(
        "--vocab",
        type=Path,
        help="of a folder: the run's vocab.tsv, where the path the checkpoint recorded is gone (checked "
        "against the recorded SHA-256)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "config",
        help="list the run configs that ship with the engine, or print one",
        description="The run configs shipped with the engine (configs/ in a checkout, inside the "
        "installed package otherwise): the paper's pre-training recipes, the fine-tuning recipes and "
        "the CPU demos. Print one to start a run from it: "
        "`catlip config show catlip_vit_b16 > b16.yaml`, then `--config b16.yaml`.",
    )
    actions = p.add_subparsers(dest="config_command", required=True, metavar="action")
    q = actions.add_parser("list", help="every shipped config: its name and what it is")
    q.set_defaults(func=cmd_config_list)
    q = actions.add_parser("show", help="print a shipped config's YAML")
    q.add_argument("name", help="a name from `catlip config list`, e.g. catlip_vit_b16")
    q.add_argument("--path", action="store_true", help="print the file's path instead of its text")
    q.set_defaults(func=cmd_config_show)


def cmd_train(args: argparse.Namespace) -> int:
    from engine import train

    argv = ([f"--config={args.config}"] if args.config else []) + [f"--set={o}" for o in args.overrides]
    return train.main(argv)  # ends the process itself (clean gloo shutdown)


def cmd_export(args: argparse.Namespace) -> int:
    from engine.checkpoint import CheckpointError, consolidate, export_fp32

    folder = args.out.suffix != ".safetensors"
    if folder and args.format == "catlip":
        print(
            f"catlip export: error: --out {args.out} is a folder, which is timm's layout; give --out "
            "FILE.safetensors for --format catlip",
            file=sys.stderr,
        )
        return 2
    if not folder and args.vocab is not None:
        print("catlip export: error: --vocab is for a folder export (--out DIR)", file=sys.stderr)
        return 2
    if folder and args.out.is_file():
        print(
            f"catlip export: error: --out {args.out} is a file; a folder export needs a folder",
            file=sys.stderr,
        )
        return 2
    from catlip.convert import InteropError

    try:
        if folder:
            from engine.export import write_folder

            state, meta = consolidate(args.checkpoint, ema=args.ema)
            path = write_folder(state, meta, args.out, vocab=args.vocab)
        elif args.format == "timm":
            from catlip.convert import export_timm

            state, meta = consolidate(args.checkpoint, ema=args.ema)
            path = export_timm(state, meta, args.out)
        else:
            path = export_fp32(args.checkpoint, args.out, ema=args.ema)
    except InteropError as err:
        what = f"--out {args.out}" if folder else "--format timm"
        print(f"catlip export: error: {what}: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError) as err:
        print(f"catlip export: error: {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    configs = list_configs()
    width = max(len(c.name) for c in configs)
    for c in configs:
        print(f"{c.name:<{width}}  {c.summary}")
    print(f"({len(configs)} configs in {configs[0].path.parent}; `catlip config show NAME` prints one)")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    try:
        config = find_config(args.name)
    except ConfigFileError as err:
        print(f"catlip config: error: {err}", file=sys.stderr)
        return 2
    if args.path:
        print(config.path)
    else:
        sys.stdout.write(config.path.read_text())
    return 0
