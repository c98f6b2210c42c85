"""Benchmark protocols: each benchmark's own way of scoring detections on whole scenes.

- `coco`: COCO's box metrics (nadir.protocols.coco), for every dataset;
- `dota_task2`, `dota_task1`: DOTA's horizontal- and oriented-box tasks (nadir.protocols.dota);
- `xview`: the xView challenge scorer (nadir.protocols.xview).

Each module computes the reference implementation's numbers (tests/test_protocols.py compares
them on fixtures the references produced) and writes the benchmark's submission files.
`nadir.protocols.scoring` turns nadir's scene detections and index objects into their
inputs; `nadir.protocols.scenes` merges window detections into scenes.
docs/evaluation.md says what each number means and which published tables it compares with.
"""

from nadir.protocols.scoring import protocol_detections, protocol_objects, score_protocols

__all__ = ["protocol_detections", "protocol_objects", "score_protocols"]
