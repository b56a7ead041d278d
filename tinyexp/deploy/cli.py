"""``tinyexp-deploy``: look at a TFLite file the way TensorFlow Lite Micro sees it.

    tinyexp-deploy inspect model.tflite          # sizes, arena, operators, quantization
    tinyexp-deploy inspect model.tflite --json   # the same as one JSON object

A missing file or one that is not a TFLite model exits with status 2 and one line
``tinyexp-deploy: <reason>``. ``--help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

PROG = "tinyexp-deploy"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="sizes, TFLM arena, operators, quantization")
    inspect.add_argument("file", help="a .tflite file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _tensor(info: object) -> str:
    d = dataclasses.asdict(info)
    quant = "" if d["scale"] is None else f"  scale {d['scale']:.6g} zero_point {d['zero_point']}"
    return f"{d['dtype']} {list(d['shape'])}{quant}"


def _report(ins: object) -> str:
    arena = ("-" if ins.arena_bytes is None else
             f"{ins.arena_bytes} bytes (TFLM reports head {ins.arena_head} + tail "
             f"{ins.arena_tail} = {ins.arena_reported})")
    lines = [
        ins.path,
        f"  flash         {ins.flash_bytes} bytes (constant buffers {ins.weight_bytes})",
        f"  arena         {arena}",
        f"  TFLM loads    {'yes' if ins.loads else 'no: ' + str(ins.error)}",
        f"  input         {_tensor(ins.input)}",
        f"  output        {_tensor(ins.output)}",
        f"  operators     {len(ins.ops)} ({', '.join(ins.op_names)})",
    ]
    width = max((len(name) for name, _, _ in ins.ops), default=0)
    for i, (name, ins_types, outs) in enumerate(ins.ops):
        lines.append(f"    {i:3d} {name:<{width}}  {', '.join(ins_types)} -> {', '.join(outs)}")
    if ins.float_ops:
        lines.append(f"  float ops in an integer model: {len(ins.float_ops)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    from tinyexp.deploy.export import DeployError
    from tinyexp.deploy.tflm import inspect

    try:
        ins = inspect(args.file)
    except DeployError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(ins)))
    else:
        print(_report(ins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
