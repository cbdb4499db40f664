"""SPEC A4: the init record, as data and as log lines."""

from __future__ import annotations

import json
import logging

import torch.nn as nn

import weightinit as wi


class Net(wi.BaseModule):
    def __init__(self):
        super().__init__([dict(type="Normal", layer="Linear", std=0.1, bias=1),
                          dict(type="Constant", layer="LayerNorm", val=1)])
        self.fc = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv1d(1, 1, 1)


def test_record_kinds_and_texts():
    m = Net()
    m.init_weights()
    rec = m.init_record
    assert rec is wi.get_init_record(m)
    assert len(rec) == 6
    assert rec["fc.weight"].info == "NormalInit: mean=0, std=0.1, bias=1"
    assert rec["fc.weight"].declared_in == "<root> (Net) init_cfg[0]"
    assert rec["fc.weight"].rule.std == 0.1
    assert (rec["fc.weight"].shape, rec["fc.weight"].dtype, rec["fc.weight"].device) == (
        (4, 3), "float32", "cpu")
    assert rec["conv.weight"].kind == "unchanged"
    assert rec["conv.weight"].info == "not changed by init_weights of Net"
    assert [r.name for r in rec.by_kind("unchanged")] == ["conv.weight", "conv.bias"]


def test_summary_groups_by_writer():
    m = Net()
    m.init_weights()
    rows = m.init_record.summary()
    assert rows[0] == ("rule", "NormalInit: mean=0, std=0.1, bias=1", 2, 16)
    assert ("unchanged", "not changed by init_weights of Net", 2, 2) in rows
    assert sum(r[2] for r in rows) == 6


def test_json_and_dump(tmp_path):
    m = Net()
    m.init_weights()
    data = json.loads(m.init_record.to_json())
    assert data["root"] == "Net"
    assert data["parameters"][0] == {
        "name": "fc.weight", "shape": [4, 3], "dtype": "float32", "device": "cpu",
        "kind": "rule", "info": "NormalInit: mean=0, std=0.1, bias=1",
        "declared_in": "<root> (Net) init_cfg[0]"}
    m.init_record.dump(str(tmp_path / "init.log"))
    lines = (tmp_path / "init.log").read_text().splitlines()
    assert lines[0] == "fc.weight - (4, 3): NormalInit: mean=0, std=0.1, bias=1"
    m.init_record.dump(str(tmp_path / "init.json"))
    assert json.loads((tmp_path / "init.json").read_text()) == data


def test_logged_summary_at_info_and_detail_at_debug(caplog):
    with caplog.at_level(logging.INFO, logger="weightinit"):
        Net().init_weights()
    assert "initialized Net: 6 parameters, 26 elements" in caplog.text
    assert "fc.weight - (4, 3)" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="weightinit"):
        Net().init_weights()
    assert "fc.weight - (4, 3): NormalInit: mean=0, std=0.1, bias=1" in caplog.text
