"""Command line of ``arcvq-train``: taming's/LDM's ``main.py`` options, and trainer flags.

Upstream added every ``Trainer`` argument to its parser with ``Trainer.add_argparse_args``, which
pytorch-lightning 2.x removed. Here every keyword of today's ``Trainer.__init__`` (except objects:
``logger``, ``callbacks``, ``plugins``, ``profiler``, ``model_registry``) is an option ``--name value``
whose value is read as YAML (``--max_epochs 3``, ``--precision bf16-mixed``, ``--devices 2``), plus
upstream's ``--gpus`` (translated by :func:`translate_gpus`). Options given on the command line
override ``lightning.trainer`` of the configs. Remaining ``key.sub=value`` arguments are config
overrides (a dotlist), as upstream.
"""
from __future__ import annotations

import argparse
import inspect
from typing import Any, Sequence

import yaml
from pytorch_lightning import Trainer

__all__ = ["TRAINER_ARGUMENTS", "get_parser", "parse_args", "translate_gpus"]

_OBJECT_ARGUMENTS = {"self", "logger", "callbacks", "plugins", "profiler", "model_registry"}
TRAINER_ARGUMENTS: tuple[str, ...] = tuple(
    name for name in inspect.signature(Trainer.__init__).parameters if name not in _OBJECT_ARGUMENTS
)


def _str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def _yaml_value(value: str) -> Any:
    return yaml.safe_load(value)


def get_parser() -> argparse.ArgumentParser:
    """The parser of ``arcvq-train`` (upstream's options, ``-f``/``-p`` both meaning ``--postfix``)."""
    parser = argparse.ArgumentParser(
        prog="arcvq-train",
        description="Train taming/LDM-style models from --base configs on pytorch-lightning 2.x "
        "(the contract of taming-transformers' main.py). Unknown 'key.sub=value' arguments "
        "override config entries.",
    )
    parser.add_argument("-n", "--name", type=str, const=True, default="", nargs="?",
                        help="postfix for the log dir (default: name of the first --base file)")
    parser.add_argument("-r", "--resume", type=str, const=True, default="", nargs="?",
                        help="resume from a log dir or a checkpoint inside one")
    parser.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=[],
                        help="config files, merged left to right, then the dotlist overrides")
    parser.add_argument("-t", "--train", type=_str2bool, const=True, default=False, nargs="?",
                        help="train")
    parser.add_argument("--no-test", type=_str2bool, const=True, default=False, nargs="?",
                        help="do not run trainer.test after training")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    parser.add_argument("-f", "-p", "--postfix", type=str, default="", help="post-postfix for the log dir name")
    parser.add_argument("-l", "--logdir", type=str, default="logs", help="directory holding the log dirs")
    parser.add_argument("--scale_lr", type=_str2bool, nargs="?", const=True, default=True,
                        help="learning rate = accumulate_grad_batches * num_devices * batch_size * base_learning_rate")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow -r/--resume to load a checkpoint that pickles Python objects besides tensors "
                        "(torch.load(weights_only=False) runs code from the file); without it such a file is refused")
    trainer_group = parser.add_argument_group("trainer", "pytorch_lightning.Trainer arguments (override lightning.trainer)")
    trainer_group.add_argument("--gpus", type=str, default=argparse.SUPPRESS,
                               help="GPU indices '0,1' (or a count '2'): accelerator gpu, DDP for several")
    for name in TRAINER_ARGUMENTS:
        trainer_group.add_argument(f"--{name}", type=_yaml_value, default=argparse.SUPPRESS, metavar="VALUE")
    return parser


_OPTIONAL_BOOL_FLAGS = ("-t", "--train", "--no-test", "--scale_lr")


def _complete_bool_flags(argv: Sequence[str]) -> list[str]:
    """``-t model.x=1``: upstream's parser would read ``model.x=1`` as the value of ``-t``."""
    completed: list[str] = []
    for index, arg in enumerate(argv):
        completed.append(arg)
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if arg in _OPTIONAL_BOOL_FLAGS and "=" in following and not following.startswith("-"):
            completed.append("true")
    return completed


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, Any], list[str]]:
    """Split ``argv`` into (cli options, trainer overrides, dotlist of config overrides)."""
    parser = get_parser()
    opt, unknown = parser.parse_known_args(_complete_bool_flags(list(argv)))
    trainer_overrides = {name: getattr(opt, name) for name in ("gpus", *TRAINER_ARGUMENTS) if hasattr(opt, name)}
    for name in trainer_overrides:
        delattr(opt, name)
    malformed = [arg for arg in unknown if "=" not in arg or arg.startswith("-")]
    if malformed:
        parser.error(f"unrecognized arguments {malformed}: options are listed by --help, "
                     "config overrides have the form key.sub=value")
    return opt, trainer_overrides, unknown


def translate_gpus(gpus: Any) -> tuple[Any, int | None]:
    """Upstream's ``gpus`` value as Lightning 2.x ``devices``, and the device count when known.

    ``"0,1"``/``"0,"``/``[0, 1]`` -> the list of indices; ``2``/``"2"`` -> 2 devices; ``-1`` -> all (count
    unknown until the Trainer exists).
    """
    if isinstance(gpus, (list, tuple)):
        devices = [int(g) for g in gpus]
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        devices = gpus
    elif isinstance(gpus, str) and "," in gpus:
        devices = [int(g) for g in gpus.split(",") if g.strip()]
    elif isinstance(gpus, str) and gpus.strip().lstrip("-").isdigit():
        devices = int(gpus)
    else:
        raise ValueError(f"--gpus must be GPU indices like '0,1' or '0,', or a count like 2; got {gpus!r}")
    if isinstance(devices, list):
        if not devices:
            raise ValueError(f"--gpus lists no GPU index: {gpus!r}")
        return devices, len(devices)
    if devices == -1:
        return -1, None
    if devices < 1:
        raise ValueError(f"--gpus count must be >= 1 or -1 (all), got {gpus!r}")
    return devices, devices
