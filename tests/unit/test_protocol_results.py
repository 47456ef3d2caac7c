"""Which seeds and arms of a protocol folder make its table: an arm a later runner added (or one still running) is
listed apart with its seeds, and never hides the seeds that finished every other arm."""

from __future__ import annotations

import json

from reftkit.evaluation.results import _finished


def _seed(folder, seed, arms, test_acc=0.5):
    (folder / f"seed{seed}" / "sft").mkdir(parents=True)
    (folder / f"seed{seed}" / "sft" / "test_sft.json").write_text("{}")
    for arm in arms:
        (folder / f"seed{seed}" / arm).mkdir()
        (folder / f"seed{seed}" / arm / "summary.json").write_text(json.dumps({"test_acc": test_acc}))


def test_a_later_arm_on_one_seed_is_listed_apart(tmp_path):
    _seed(tmp_path, 0, ["reft_rloo", "online_st", "reft_rloo_k2"], test_acc=0.8)
    _seed(tmp_path, 1, ["reft_rloo", "online_st"])
    _seed(tmp_path, 2, ["reft_rloo", "online_st"])
    (tmp_path / "seed3" / "sft").mkdir(parents=True)  # SFT still running: no test evaluation yet
    protocol = {"seeds": [0, 1, 2, 3], "arms": ["reft_rloo", "online_st", "reft_rloo_k2", "reft_grpo"]}
    seeds, arms, partial = _finished(tmp_path, protocol)
    assert seeds == [0, 1, 2]
    assert arms == ["reft_rloo", "online_st"]
    assert partial == {"reft_rloo_k2": {"0": 0.8}}  # reft_grpo ran nowhere: not listed


def test_a_seed_with_no_arm_yet_is_left_out(tmp_path):
    _seed(tmp_path, 0, ["reft_rloo"])
    _seed(tmp_path, 1, [])
    assert _finished(tmp_path, {"seeds": [0, 1], "arms": ["reft_rloo"]}) == ([0], ["reft_rloo"], {})
