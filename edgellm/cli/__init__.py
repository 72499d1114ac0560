"""The `edgellm` command: a small dispatcher that imports one verb's module at a time,
so `edgellm info` never pays for `convert`'s imports."""

from __future__ import annotations

import importlib
import sys

import click

# verb -> (module under edgellm.cli, click command name in it, one-line help)
_VERBS = {
    "convert": ("convert", "convert", "Convert a Hugging Face checkpoint to GGUF (LoRA merge, calibration, quantization) or ONNX."),
    "info": ("info", "info", "Show a GGUF file's metadata and tensor table."),
    "run": ("run", "run", "Generate text for a prompt, streamed as it is produced."),
    "chat": ("chat", "chat", "Chat with a model interactively (or one message per line on stdin)."),
    "perplexity": ("perplexity", "perplexity", "A model's perplexity on a text file."),
    "rag": ("rag", "rag", "Index your documents, search them, and ask questions answered with citations."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _VERBS:
            return None
        module, attr, _ = _VERBS[name]
        return getattr(importlib.import_module(f"edgellm.cli.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _VERBS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="edgellm")
def cli() -> None:
    """edgellm: run language models offline, on your own device."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="edgellm", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
