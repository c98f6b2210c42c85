"""DOTA label files: the one parser for the sample and real DOTA."""

import pytest

from nadir.core.errors import InputError
from nadir.datasets.dota import CLASSES_V1_5, parse_label_file, parse_label_text
from nadir.datasets.records import BadInput


def test_header_floats_and_optional_difficult():
    text = ("imagesource:GoogleEarth\ngsd:0.146\n"
            "10.5 20 30 20 30 40.25 10.5 40.25 container-crane 1\n"
            "1 1 5 1 5 5 1 5 plane\n")
    label = parse_label_text(text, "P0001.txt", CLASSES_V1_5)
    assert label.imagesource == "GoogleEarth"
    assert label.gsd == pytest.approx(0.146)
    assert [o.category for o in label.objects] == ["container-crane", "plane"]
    assert label.objects[0].polygon[7] == 40.25
    assert [o.difficult for o in label.objects] == [1, 0]
    assert [o.line for o in label.objects] == [3, 4]


def test_headerless_and_empty_files():
    assert parse_label_text("", "empty.txt", CLASSES_V1_5).objects == []
    label = parse_label_text("gsd:null\n0 0 4 0 4 4 0 4 ship 0\n", "x.txt", CLASSES_V1_5)
    assert label.gsd is None and len(label.objects) == 1


@pytest.mark.parametrize("line, message", [
    ("1 2 3 4 5 6 7 plane 0", "got 7 numbers"),
    ("1 2 3 4 5 6 7 8 0", "class name is missing"),
    ("1 2 3 4 5 6 7 8 airport 0", "unknown class 'airport'"),
    ("1 2 3 x 5 6 7 8 plane 0", "coordinate 4 is not a number: 'x'"),
    ("1 2 3 4 5 6 7 8 plane 2", "difficult must be 0 or 1"),
    ("1 2 3 4 5 6 7 nan plane 0", "finite"),
])
def test_bad_lines_name_file_and_line(line, message):
    text = "imagesource:x\ngsd:1\n" + line + "\n"
    with pytest.raises(InputError) as err:
        parse_label_text(text, "labelTxt/P0007.txt", CLASSES_V1_5)
    assert err.value.line == 3
    assert str(err.value).startswith("labelTxt/P0007.txt, line 3: ")
    assert message in str(err.value)


@pytest.mark.parametrize("header", [True, False], ids=["with-header", "headerless"])
def test_a_utf8_byte_order_mark_is_not_part_of_line_1(tmp_path, header):
    """Windows editors start files with a BOM: line 1 (header or object) must still parse,
    and under `skip` no object may be lost to it."""
    lines = ["imagesource:GoogleEarth", "gsd:0.5"] if header else []
    lines += ["1 1 5 1 5 5 1 5 plane 0", "2 2 6 2 6 6 2 6 ship 1"]
    path = tmp_path / "P0001.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    bad = BadInput({"malformed_record": "skip"})
    label = parse_label_file(path, CLASSES_V1_5, bad)
    assert [o.category for o in label.objects] == ["plane", "ship"]
    assert label.imagesource == ("GoogleEarth" if header else None)
    assert sum(bad.skipped.values()) == 0
