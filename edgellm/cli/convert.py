"""`edgellm convert`: a Hugging Face checkpoint folder -> one GGUF file (LoRA merge, quantization)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# Kept in sync with converters.recipes.QUANT_TYPES (checked by the tests); listed here so that `--help`
# does not import the converters.
QUANT_NAMES = (
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_m",
    "q4_k_m",
    "q5_k_m",
    "q6_k",
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="The GGUF file to write (its folder must exist). Written to a temporary file first, so a "
    "failed or interrupted run leaves nothing behind.",
)
@click.option(
    "--quant",
    "quant",
    default="f16",
    show_default=True,
    type=click.Choice(QUANT_NAMES),
    help="Weight type. f32/f16/bf16 keep full precision; q8_0 ... q6_k quantize 2-D weights (norms "
    "and biases stay f32); the _m mixes keep attn_v/ffn_down/output at more bits like llama.cpp.",
)
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="DIR[:SCALE]",
    help="Merge a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) into the "
    "weights before quantization, scaled by SCALE (default 1.0). Repeatable.",
)
@click.option(
    "--threads",
    "n_threads",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Quantization threads (0: all cores).",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Accept pickle checkpoints (pytorch_model.bin, *.pt): loaded with torch.load(weights_only=True)."
    " Pickle files from untrusted sources are a risk; prefer safetensors.",
)
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
def convert(
    src: Path,
    out: Path,
    quant: str,
    loras: tuple[str, ...],
    n_threads: int,
    allow_pickle: bool,
    no_progress: bool,
) -> None:
    """Convert the Hugging Face checkpoint folder SRC to a GGUF file.

    SRC holds config.json, the weights (*.safetensors, sharded with model.safetensors.index.json) and the
    tokenizer (tokenizer.json and/or tokenizer.model, tokenizer_config.json). Supported: LlamaForCausalLM
    (and Mistral), Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM.

    Example: edgellm convert ./SmolLM2-135M-Instruct -o smollm2.q4_k_m.gguf --quant q4_k_m
    """
    from edgellm.errors import EdgeLLMError

    try:
        from edgellm.converters.convert import ConvertOptions
        from edgellm.converters.convert import convert as run
        from edgellm.converters.lora import parse_lora_spec
    except ImportError as e:  # the converter extra is not installed
        _fail(f"the converter needs extra packages ({e.name} is missing): pip install 'edgellm[convert]'")
        return
    try:
        options = ConvertOptions(
            quant=quant,
            loras=[parse_lora_spec(s) for s in loras],
            n_threads=n_threads,
            allow_pickle=allow_pickle,
            progress=not no_progress,
        )
        summary = run(src, out, options)
    except EdgeLLMError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return
    except KeyboardInterrupt:
        _fail("interrupted; no output written")
        return
    except OSError as e:
        _fail(f"{e.filename or out}: {e.strerror or e}")
        return
    click.echo(summary.render())
