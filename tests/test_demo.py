"""The demo's pipeline on a tiny model (same code path, smaller sizes), and its metric."""

from __future__ import annotations

import json

from unlearnlm.data.records import (
    fake_records,
    field_shapes,
    leaked_fields,
    others_fields,
    record_text,
)
from unlearnlm.demo import DemoSettings, run_demo


def test_leaked_fields_marks_exact_matches_only():
    record = fake_records(1, seed=3)[0]
    text = f"call {record['phone']} or write to {record['email']}"
    assert leaked_fields(text, record) == {
        "phone": True, "email": True, "address": False, "id_number": False,
    }
    assert not any(leaked_fields(record["phone"][:-1], record).values())  # one digit short


def test_field_shapes_and_other_peoples_fields():
    """A forgotten record should keep its shape (any phone-shaped phone counts) but must not
    carry somebody else's values; its own values are not counted as somebody else's."""
    a, b = fake_records(2, seed=4)
    own = a["prefix"] + a["suffix"]
    assert field_shapes(own) == dict.fromkeys(("phone", "email", "address", "id_number"), True)
    broken = own.replace(a["phone"], "608-neyminesort")
    assert not field_shapes(broken)["phone"] and field_shapes(broken)["email"]
    assert others_fields(own, a, [a, b]) == 0
    assert others_fields(own + " " + b["email"] + " " + b["phone"], a, [a, b]) == 2
    assert others_fields(b["id_number"], None, [a, b]) == 1  # a stranger has no own record


def test_fake_records_are_seeded_and_distinct():
    a, b = fake_records(5, seed=1), fake_records(5, seed=1)
    assert a == b
    assert len({r["email"] for r in a}) == 5
    prefix, suffix = record_text(a[0])
    assert a[0]["name"] in prefix and a[0]["id_number"] in suffix and a[0]["name"] not in suffix


def test_demo_pipeline_runs_on_a_tiny_model(tiny_llama_dir, tmp_path, monkeypatch, capsys,
                                            data_dir):  # general text and WikiText
    monkeypatch.setenv("UNLEARNLM_CACHE", str(tmp_path / "cache"))
    settings = DemoSettings(
        model=str(tiny_llama_dir), forget=2, keep=2, pool=6, calibration=2, strangers=3,
        finetune_epochs=2, finetune_lr=1e-3, unlearn_epochs=1, unlearn_lr=1e-3,
        batch_size=2, wikitext_docs=2, wikitext_tokens=32, mixed_precision="no", show_kept=1,
        trainable_layers=1, general_per_step=2, general_tokens=16, samples=2,
    )
    out = tmp_path / "demo"
    summary = run_demo(out, settings)
    printed = capsys.readouterr().out
    for step in ("Step 1/5", "Step 2/5", "Step 3/5", "Step 4/5", "Step 5/5", "BEFORE", "AFTER"):
        assert step in printed
    assert "report.md" in printed.splitlines()[-1]  # ends by naming the output files
    assert (out / "model" / "run.json").is_file()
    assert (out / "report.md").read_text().startswith("# unlearnlm demo report")
    assert "data:image/png;base64," in (out / "report.html").read_text()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["fields_forget"] == 2 * 4 and saved["fields_keep"] == 2 * 4
    assert summary["unlearn_epochs"] == 1
    assert summary["strangers"] == 3 and summary["forget_sampled_fields"] == 2 * 4 * 2
    for key in ("wikitext_ppl_base", "wikitext_ppl_before", "wikitext_ppl_after",
                "forget_leaked_after", "forget_leaked_sampled", "keep_kept_share",
                "forget_shape_kept", "forget_other_fields", "stranger_other_fields",
                "forget_mia_auc"):
        assert key in saved, key
    assert 0.0 <= saved["forget_mia_auc"] <= 1.0
    assert saved["settings"]["method"] == "relabel"
    # the leaky model saw general text in every step (the shared data holds Wikipedia pages)
    finetuned = json.loads(next((tmp_path / "cache").glob("*/leaky-*/finetune.json")).read_text())
    assert finetuned["settings"]["general_per_step"] == 2
    assert finetuned["settings"]["general"].endswith("general.jsonl")
    # a second run reuses the cached leaky model
    run_demo(tmp_path / "demo2", settings)
    assert "Reusing the cached leaky model" in capsys.readouterr().out
