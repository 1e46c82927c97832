"""Options ``kbench run`` and ``kbench tune`` share: one ``--FAMILY NAME`` flag per registered op
family, and the flags that change a spec (``--dtype``, ``--batch``, ``--layers``, ...)."""

from __future__ import annotations

import click

from kbench.plugins import get_registry


class FamilyFlagsCommand(click.Command):
    """A command with one ``--FAMILY NAME`` option per op family the registry knows, so a
    family a plugin declares gets its flag like ``--attention`` (built when the command parses
    or shows its help, not when kbench is imported)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        taken = {opt for param in params for opt in getattr(param, "opts", ())}
        families = [click.Option([f"--{family}", family_param(family)], default=None, metavar="NAME",
                                 help=f"Backend for the {family} family.")
                    for family in get_registry().families if f"--{family}" not in taken]
        return params[:1] + families + params[1:]


def family_param(family: str) -> str:
    """The click parameter name of ``--FAMILY`` (any family name, ``layer-norm`` included)."""
    return "family__" + "".join(c if c.isalnum() else "_" for c in family)


def family_choices(flags: dict) -> dict[str, str]:
    """family -> backend from the ``--FAMILY NAME`` flags given; their entries leave ``flags``."""
    names = {family_param(family): family for family in get_registry().families}
    chosen = {}
    for key in [k for k in flags if k.startswith("family__")]:
        value = flags.pop(key)
        if value:
            chosen[names[key]] = value
    return chosen


def spec_options(command):
    """The spec-changing flags, as ``Overrides.from_cli`` takes them."""
    for option in reversed((
        click.option("--dtype", default=None, help="float32, bfloat16 (bf16), float16 (fp16)."),
        click.option("--device", default=None, help="cpu or cuda."),
        click.option("--batch", default=None, metavar="1,8,32", help="Batch sizes of the workload."),
        click.option("--prompt-len", "prompt_len", default=None, metavar="128,1024",
                     help="Prompt lengths of the workload."),
        click.option("--decode-steps", "decode_steps", type=click.IntRange(min=1), default=None,
                     help="Decode steps timed."),
        click.option("--layers", type=click.IntRange(min=1), default=None,
                     help="Build the model with this many layers."),
        click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None,
                     help="Decode under a captured CUDA graph (op rows report graph-replay kernel time on CUDA "
                          "either way)."),
    )):
        command = option(command)
    return command
