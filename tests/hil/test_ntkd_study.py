"""The NTKD study's statistics and protocol helpers (benchmarks/ntkd_study.py) against exact oracles."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hil.losses import TaskObjective
from onn_core.errors import InputError

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "ntkd_study.py"
spec = importlib.util.spec_from_file_location("ntkd_study", PATH)
study = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = study  # dataclasses look their module up
spec.loader.exec_module(study)


def test_paired_difference_is_the_t_interval_of_per_seed_differences():
    values, baseline = {0: 81.0, 1: 83.0, 2: 82.0, 7: 99.0}, {0: 80.0, 1: 80.0, 2: 80.0}
    got = study.paired_difference(values, baseline)  # differences 1, 3, 2: mean 2, sd 1, seed 7 unpaired
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, 2)
    assert got["seeds"] == [0, 1, 2]
    assert got["mean"] == pytest.approx(2.0, rel=1e-12)
    assert got["ci95"] == pytest.approx([2 - half, 2 + half], rel=1e-9)
    assert study.paired_difference({0: 1.0}, {0: 0.5}) == {"mean": 0.5, "ci95": None, "seeds": [0]}
    with pytest.raises(InputError, match="at least one seed"):
        study.paired_difference({0: 1.0}, {1: 1.0})


def test_summary_uses_the_sample_standard_deviation():
    got = study.summarise({2: 3.0, 0: 1.0, 1: 2.0})
    assert (got["mean"], got["std"], got["seeds"], got["values"]) == (2.0, 1.0, [0, 1, 2], [1.0, 2.0, 3.0])


def test_leave_one_out_ridge_equals_refitting_without_each_point():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(14, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (14,), generator=g)
    test = torch.randn(6, 5, generator=g, dtype=torch.float64)
    test_labels = torch.randint(0, 3, (6,), generator=g)
    k, k_test = features @ features.T + 0.5, test @ features.T + 0.5
    rels = (1e-3, 1e-1, 10.0)
    got = study.loo_ridge_accuracy(k, labels, k_test, test_labels, num_classes=3, grid_rel=rels)
    targets = F.one_hot(labels, 3).double() - 1 / 3
    scale = float(k.diagonal().mean())
    for rel in rels:  # refit on the other 13 points, predict the held-out one
        hits = 0
        for i in range(14):
            keep = [j for j in range(14) if j != i]
            ridge = k[keep][:, keep] + rel * scale * torch.eye(13, dtype=torch.float64)
            alpha = torch.linalg.solve(ridge, targets[keep])
            hits += int((k[i, keep] @ alpha).argmax() == labels[i])
        assert got["loo"][str(rel)] == pytest.approx(hits / 14, abs=1e-12)
    best = max(rels, key=lambda r: (got["loo"][str(r)], r))
    alpha = torch.linalg.solve(k + best * scale * torch.eye(14, dtype=torch.float64), targets)
    assert got["rel"] == best
    assert got["accuracy"] == pytest.approx(float(((k_test @ alpha).argmax(1) == test_labels).double().mean()))
    with pytest.raises(InputError, match="do not match"):
        study.loo_ridge_accuracy(k, labels[:5], k_test, test_labels)


def test_every_method_gets_the_same_number_of_tuning_candidates():
    for setting in study.SETTINGS:
        grids = study.grid(setting)
        assert set(grids) == set(study.METHODS)
        assert all(all(cand["lr"] > 0 for cand in cands) for cands in grids.values())
        if not setting.startswith("compensation"):
            assert {len(c) for c in grids.values()} == {4}


def test_compensation_tunes_every_method_over_the_same_learning_rates():
    # amendment 2026-12-06: the task chose 3e-4, outside the others' pre-registered {1e-3, 3e-3}
    grids = study.grid("compensation_1pct")
    assert [c["lr"] for c in grids["task"]] == [1e-4, 3e-4, 1e-3, 3e-3]
    for method, cands in grids.items():
        assert sorted({c["lr"] for c in cands}) == [1e-4, 3e-4, 1e-3, 3e-3], method
        assert len(cands) == (4 if method == "task" else 8)
    amendment = study.AMENDMENTS[0]
    assert amendment["date"] == "2026-12-06" and amendment["setting"] == "compensation_1pct"
    assert amendment["change"] and amendment["reason"]


def test_tuned_choice_is_the_best_validation_candidate_earlier_on_ties():
    assert study.best_candidate([0.5, 0.7, 0.7, 0.6]) == 1
    grids = {"a": {"task": [{"lr": 1}, {"lr": 2}], "kd": [{"lr": 1}, {"lr": 2}]}, "b": {"task": [{"lr": 3}]}}
    cells = {"a/tune/task/0": {"val": 0.4}, "a/tune/task/1": {"val": 0.6},
             "a/tune/kd/0": {"val": 0.9},  # kd's second candidate has not run: no choice yet
             "b/tune/task/0": {"val": 0.1}, "b/task/0": {"test": 0.2}}
    assert study.choices_from_cells(cells, grids) == {"a": {"task": {"lr": 2}}, "b": {"task": {"lr": 3}}}


def test_merging_choices_keeps_every_earlier_setting_and_method():
    old = {"labels_1pct": {"task": {"lr": 1e-2}, "kd": {"lr": 3e-3}}, "labels_5pct": {"task": {"lr": 3e-3}}}
    new = {"compensation_1pct": {"task": {"lr": 3e-4}}, "labels_1pct": {"kd": {"lr": 1e-2}}}
    merged = study.merge_choices(old, new)
    assert merged == {"labels_1pct": {"task": {"lr": 1e-2}, "kd": {"lr": 1e-2}}, "labels_5pct": {"task": {"lr": 3e-3}},
                      "compensation_1pct": {"task": {"lr": 3e-4}}}
    assert old["labels_1pct"]["kd"] == {"lr": 3e-3}  # inputs untouched
    assert study.merge_choices(merged, {}) == merged


def _old_results(grids):
    cells = {"labels_1pct/tune/task/0": {"val": 0.5}, "labels_1pct/task/0": {"test": 0.7},
             "compensation_1pct/tune/task/0": {"val": 0.8}, "compensation_1pct/task/0": {"test": 0.81},
             "compensation_1pct/explore_lr/kd/0": {"test": 0.8}}
    return {"sizes": study.to_plain(study.SMOKE.__dict__), "grids": grids, "cells": cells,
            "choice": {"labels_1pct": {"task": {"lr": 1e-2}}, "compensation_1pct": {"task": {"lr": 3e-4}}},
            "timing": {"labels_1pct": {"ntkd_over_kd": 1.0}, "compensation_1pct": {"ntkd_over_kd": 0.7}},
            "rows": [{"setting": "labels_1pct", "method": "task"}, {"setting": "compensation_1pct", "method": "task"}],
            "verdicts": {"labels_1pct": {}, "compensation_1pct": {"ntkd_cka": {"pays": False}}},
            "exploratory": {"rows": []}, "teacher": {"test": 0.9}}


def test_a_changed_grid_moves_its_setting_under_superseded_and_keeps_the_rest(tmp_path):
    grids = {s: study.grid(s) for s in study.SETTINGS}
    old_comp = {**grids["compensation_1pct"], "task": [{"lr": 3e-4}, {"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}]}
    old = _old_results({**grids, "compensation_1pct": old_comp})
    out = tmp_path / "study.json"
    out.write_text(study.json.dumps(old))
    data = study.Study(out, tmp_path / "work", study.SMOKE, smoke=True).data
    assert data["grids"] == grids and data["amendments"] == study.AMENDMENTS
    assert set(data["cells"]) == {"labels_1pct/tune/task/0", "labels_1pct/task/0"}
    assert data["choice"] == {"labels_1pct": {"task": {"lr": 1e-2}}}
    assert data["timing"] == {"labels_1pct": {"ntkd_over_kd": 1.0}} and data["teacher"] == {"test": 0.9}
    assert [r["setting"] for r in data["rows"]] == ["labels_1pct"] and "exploratory" not in data
    (block,) = data["superseded"]
    assert block["setting"] == "compensation_1pct" and block["grid"] == old_comp
    assert set(block["cells"]) == {k for k in old["cells"] if k.startswith("compensation_1pct/")}
    assert block["choice"] == {"task": {"lr": 3e-4}} and block["timing"] == {"ntkd_over_kd": 0.7}
    assert block["rows"] == [{"setting": "compensation_1pct", "method": "task"}]
    assert block["verdict"] == {"ntkd_cka": {"pays": False}} and block["exploratory"] == {"rows": []}
    # read back unchanged grids: nothing moves, the earlier superseded block stays
    out.write_text(study.json.dumps(data))
    again = study.Study(out, tmp_path / "work", study.SMOKE, smoke=True).data
    assert again["superseded"] == data["superseded"] and again["cells"] == data["cells"]
    data["rebuilds"] = [{"what": "teacher"}]
    out.write_text(study.json.dumps(data))
    assert study.Study(out, tmp_path / "work", study.SMOKE, smoke=True).data["rebuilds"] == [{"what": "teacher"}]
    assert again["choice"] == data["choice"]


def test_labelled_subsets_are_nested_and_seeded():
    data = study.Data(torch.zeros(100, 1, 2, 2), torch.arange(100) % 10, torch.zeros(1), torch.zeros(1),
                      torch.zeros(1), torch.zeros(1))
    small, large = data.subset(3, 10), data.subset(3, 40)
    assert set(small.tolist()) <= set(large.tolist()) and len(set(large.tolist())) == 40
    assert torch.equal(small, data.subset(3, 10)) and not torch.equal(small, data.subset(4, 10))


def test_fit_is_reproducible_for_a_seed_and_learns():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()  # a learnable rule

    def trained(seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        return study.fit(model, TaskObjective(), x, y, steps=60, lr=3e-2, batch=16, seed=seed)

    a, b, c = trained(0), trained(0), trained(1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert study.accuracy(a, x, y) >= 0.9
    with pytest.raises(InputError, match="fewer than one batch"):
        study.fit(a, TaskObjective(), x[:8], y[:8], steps=1, lr=1e-3, batch=16, seed=0)


def test_a_rebuilt_teacher_or_device_is_noted_once_with_both_records(tmp_path):
    s = study.Study(tmp_path / "study.json", tmp_path / "work", study.SMOKE, smoke=True)
    assert study.note_rebuild(s, "compensation", {"design_test": 0.8}, ("design_test",))  # nothing recorded
    s.data["compensation"] = {"design_test": 0.83, "uncompensated_test": 0.79}
    new = {"design_test": 0.82, "uncompensated_test": 0.80, "design_wall_s": 1.0}
    assert not study.note_rebuild(s, "compensation", new, ("design_test", "uncompensated_test"))
    cached = {"design_test": 0.82, "uncompensated_test": 0.80}  # the same device read back from the work dir
    assert not study.note_rebuild(s, "compensation", cached, ("design_test", "uncompensated_test"))
    (note,) = s.data["rebuilds"]
    assert note["what"] == "compensation" and note["matches_recorded"] is False
    assert note["record"] == new and note["recorded"] == {"design_test": 0.83, "uncompensated_test": 0.79}
    s.data["teacher"] = {"test": 0.9}
    assert study.note_rebuild(s, "teacher", {"test": 0.9, "wall_s": 2.0}, ("test",))  # rebuilt, equal: noted
    assert [r["what"] for r in s.data["rebuilds"]] == ["compensation", "teacher"]
    assert s.data["rebuilds"][1]["matches_recorded"] is True


def test_a_rebuilt_compensation_device_replaces_the_record_and_keeps_the_old_one(tmp_path):
    s = study.Study(tmp_path / "study.json", tmp_path / "work", study.SMOKE, smoke=True)
    s.data["compensation"] = {"design_test": 0.83, "uncompensated_test": 0.79, "design_wall_s": 9.0}
    study.record_compensation(s, {"design_test": 0.82, "uncompensated_test": 0.80, "design_wall_s": 1.0})
    assert s.data["compensation"] == {"design_test": 0.82, "uncompensated_test": 0.80, "design_wall_s": 1.0,
                                      "errors": study.fabrication_errors()}
    assert s.data["rebuilds"][0]["recorded"]["design_test"] == 0.83
    study.record_compensation(s, {"design_test": 0.82, "uncompensated_test": 0.80})  # read back: merged
    assert s.data["compensation"]["design_wall_s"] == 1.0 and len(s.data["rebuilds"]) == 1
    assert study.json.loads((tmp_path / "study.json").read_text())["compensation"]["design_test"] == 0.82
