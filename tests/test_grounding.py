"""vlkit.grounding: the [0, 1000) box bins, the `<ref>..</ref><box>..</box>` text and its parser, IoU.
(grounding_score, built on these, is tested with many parser cases in tests/eval/test_metrics.py.)"""
import pytest

from vlkit.grounding import (Grounded, area, box_text, from_bins, iou, parse_boxes, parse_first_box, ref_box_text,
                             to_bins)


def test_bins_floor_clamp_and_map_back():
    assert to_bins((0, 0, 64, 64), 64, 64) == (0, 0, 999, 999)                 # the right edge clamps to 999
    assert to_bins((16, 8, 48.9, 32), 64, 32) == (250, 250, 764, 999)          # floor(px / W * 1000)
    assert to_bins((-3, 0, 10, 10), 100, 100) == (0, 0, 100, 100)              # negative clamps to 0
    assert from_bins((250, 500, 750, 1000), 64, 32) == (16.0, 16.0, 48.0, 32.0)
    assert to_bins(from_bins((123, 456, 789, 998), 1000, 500), 1000, 500) == (123, 456, 789, 998)
    with pytest.raises(ValueError, match="0x10"):
        to_bins((0, 0, 1, 1), 0, 10)


def test_box_and_ref_text():
    assert box_text((1.0, 2, 300, 999)) == "<box>(1,2),(300,999)</box>"
    assert ref_box_text("the dog", (1, 2, 3, 4)) == "<ref>the dog</ref><box>(1,2),(3,4)</box>"
    assert ref_box_text("dogs", [(1, 2, 3, 4), (5, 6, 7, 8)]) == \
        "<ref>dogs</ref><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box>"


def test_parse_boxes_pairs_each_box_with_the_ref_before_it():
    text = ("<box>(1,1),(2,2)</box> and <ref> the cat </ref><box>(10,20),(30,40)</box><box>(5,5),(6,6)</box>"
            "<ref>a dog</ref><box>(0,0),(1001,3)</box><box> ( 7 , 8 ) ( 9.6 , 10 )")
    assert parse_boxes(text) == [Grounded(None, (1, 1, 2, 2)), Grounded("the cat", (10, 20, 30, 40)),
                                 Grounded("the cat", (5, 5, 6, 6)),
                                 Grounded("a dog", (7, 8, 10, 10))]   # out of [0, 1000] dropped; rounded; no </box>
    round_trip = parse_boxes(ref_box_text("two words", [(3, 4, 5, 6), (7, 8, 9, 10)]))
    assert [(g.phrase, g.box) for g in round_trip] == [("two words", (3, 4, 5, 6)), ("two words", (7, 8, 9, 10))]


def test_parse_first_box_never_guesses():
    assert parse_first_box("<box>(-1,0),(5,5)</box><box>(1,2),(3,4)</box>") == (1, 2, 3, 4)
    assert parse_first_box("left side, (1,2),(3,4)") is None
    assert parse_first_box("<box>(1,2)</box>") is None
    assert parse_first_box("") is None


@pytest.mark.parametrize("a,b,expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),
    ((10, 10, 0, 0), (0, 0, 10, 10), 0.0),          # inverted: zero area
    ((3, 3, 3, 9), (3, 3, 3, 9), 0.0),              # degenerate vs itself: 0/0 -> 0
])
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected) and iou(b, a) == pytest.approx(expected)


def test_area_of_inverted_box_is_zero():
    assert area((0, 0, 4, 2.5)) == 10.0 and area((4, 0, 0, 2)) == 0.0 and area((0, 2, 4, 0)) == 0.0
