"""Compression: transforms of a run that end in a run folder every command takes.

| command | module | what it makes |
| --- | --- | --- |
| `lmforge compress distill` | distill.py | a smaller student trained through the loop on the teacher's outputs |
| `lmforge compress prune` | prune.py | attention heads and FFN neurons physically removed (then optionally recovered) |
| `lmforge compress quantize` | quantize.py | int8 linear layers (torchao) for CPU inference |

Each writes `compression.json` (what it was made from, and how) and `report.json` (report.py: size,
speed and task metric before and after).
"""
