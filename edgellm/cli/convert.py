"""`edgellm convert`: a Hugging Face checkpoint folder -> one GGUF file (LoRA merge, calibration, quantization),
or an ONNX folder (an ONNX Runtime decoder with a KV cache, quantized by ONNX Runtime's tools)."""

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
ONNX_QUANT_NAMES = ("fp32", "fp16", "int8", "int4")


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
    help="The GGUF file to write (its folder must exist), or the folder to create with --format onnx. "
    "Written under a temporary name first, so a failed or interrupted run leaves nothing behind.",
)
@click.option(
    "--format",
    "fmt",
    default="gguf",
    show_default=True,
    type=click.Choice(("gguf", "onnx")),
    help="gguf: one GGUF file. onnx: a folder (model.onnx with KV cache inputs and outputs, the tokenizer, "
    "edgellm.json) that `edgellm run DIR` and edgellm.LLM(DIR) run with ONNX Runtime.",
)
@click.option(
    "--quant",
    "quant",
    default=None,
    type=click.Choice(QUANT_NAMES + ONNX_QUANT_NAMES),
    help="Weight type. GGUF (default f16): f32/f16/bf16 keep full precision; q8_0 ... q6_k quantize 2-D "
    "weights (norms and biases stay f32); the _m mixes keep attn_v/ffn_down/output at more bits like "
    "llama.cpp. ONNX (default fp32): fp32, fp16, int8 and int4 (block-wise MatMul weights).",
)
@click.option(
    "--calib",
    "calib",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A text file to calibrate on (GGUF only): activation statistics of every linear layer become "
    "importance weights for the quantizer's error (an importance matrix).",
)
@click.option(
    "--calib-tokens",
    "calib_tokens",
    default=8192,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tokens of the calibration text to run through the model (the file must have at least this many).",
)
@click.option(
    "--awq",
    is_flag=True,
    help="Activation-aware scaling (needs --calib): per layer, search the per-channel scale that minimises "
    "the quantized layer's output error and fold it into the preceding norm or linear layer.",
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
    fmt: str,
    quant: str | None,
    calib: Path | None,
    calib_tokens: int,
    awq: bool,
    loras: tuple[str, ...],
    n_threads: int,
    allow_pickle: bool,
    no_progress: bool,
) -> None:
    """Convert the Hugging Face checkpoint folder SRC to a GGUF file (or, with --format onnx, an ONNX folder).

    SRC holds config.json, the weights (*.safetensors, sharded with model.safetensors.index.json) and the
    tokenizer (tokenizer.json and/or tokenizer.model, tokenizer_config.json). Supported: LlamaForCausalLM
    (and Mistral), Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM.

    \b
    Examples:
      edgellm convert ./SmolLM2-135M-Instruct -o smollm2.q4_k_m.gguf --quant q4_k_m
      edgellm convert ./SmolLM2-135M-Instruct -o smollm2.q4_0.gguf --quant q4_0 --calib notes.txt --awq
      edgellm convert ./SmolLM2-135M-Instruct -o smollm2-onnx-int4 --format onnx --quant int4
    """
    from edgellm.errors import EdgeLLMError

    if fmt == "onnx":
        quant = quant or "fp32"  # the exporter refuses a GGUF type, naming the ONNX ones
        if calib is not None or awq:
            _fail("--calib and --awq apply to GGUF output; ONNX quantization uses ONNX Runtime's own tools")
    else:
        quant = quant or "f16"
        if quant not in QUANT_NAMES:
            _fail(f"--quant {quant}: an ONNX type; GGUF takes {', '.join(QUANT_NAMES)}")
    try:
        if fmt == "onnx":
            from edgellm.converters.onnx_export import OnnxOptions
            from edgellm.converters.onnx_export import export_onnx as run
        else:
            from edgellm.converters.convert import ConvertOptions
            from edgellm.converters.convert import convert as run
        from edgellm.converters.lora import parse_lora_spec
    except ImportError as e:  # the converter extra is not installed
        extra = "onnx" if fmt == "onnx" else "convert"
        _fail(f"the converter needs extra packages ({e.name} is missing): pip install 'edgellm[{extra}]'")
        return
    try:
        if fmt == "onnx":
            options = OnnxOptions(
                quant=quant,
                loras=[parse_lora_spec(s) for s in loras],
                allow_pickle=allow_pickle,
                progress=not no_progress,
            )
        else:
            options = ConvertOptions(
                quant=quant,
                loras=[parse_lora_spec(s) for s in loras],
                n_threads=n_threads,
                allow_pickle=allow_pickle,
                progress=not no_progress,
                calib=calib,
                calib_tokens=calib_tokens,
                awq=awq,
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
