"""The whole loop through `humpback run` on the real embedded model (tiny recipe: a few minutes)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import TINY

from humpback_lite.cli import main
from humpback_lite.engine import Engine
from humpback_lite.store import read_jsonl

STAGES = ["seed", "corpus", "backward", "augment", "round_00/train", "round_01/score", "round_01/select",
          "round_01/train", "round_02/score", "round_02/select", "round_02/train", "ablation_random", "ablation_all",
          "evaluate", "ifeval", "export"]


def _finished(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    return {k: v.get("finished") for k, v in m["stages"].items()}


@pytest.fixture(scope="module")
def tiny_run(hb_home, hf_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = CliRunner().invoke(main, ["run", str(TINY), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_every_stage_and_the_export_folder(tiny_run, model_gguf):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    export = tiny_run / "export"
    for name in ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter.gguf",
                 "dataset.jsonl", "README.md", "Modelfile", "model.gguf"]:
        assert (export / name).is_file(), name
    rows = read_jsonl(export / "dataset.jsonl")
    assert {r["source"] for r in rows} == {"seed", "augmented"}
    assert sum(r["source"] == "seed" for r in rows) == 8
    for r in rows:
        assert set(r) >= {"instruction", "output", "source", "score", "round"}
        assert (r["score"] is None) == (r["source"] == "seed")
    assert "FROM ./model.gguf" in (export / "Modelfile").read_text()
    card = (export / "README.md").read_text()
    assert "peft" in card.lower() and "--lora adapter.gguf" in card and "ollama create" in card
    # the exported GGUF LoRA loads in llama.cpp and changes what the model predicts
    base, tuned = Engine(model_gguf, n_ctx=512), Engine(model_gguf, adapter=export / "adapter.gguf", n_ctx=512)
    tokens = base.tokenize(base.format([{"role": "user", "content": "What is a list?"}]))
    assert (base.next_token_logits(tokens) != tuned.next_token_logits(tokens)).any()
    base.close()
    tuned.close()


def test_every_candidate_gets_a_score_each_round(tiny_run):
    pairs = read_jsonl(tiny_run / "augment" / "pairs.jsonl")
    assert len(pairs) == 6
    for rnd in ("round_01", "round_02"):
        scored = read_jsonl(tiny_run / rnd / "score" / "scored.jsonl")
        assert [s["id"] for s in scored] == [p["id"] for p in pairs]
        assert all(1 <= s["score"] <= 5 for s in scored if s["instruction"].strip())
        kept = read_jsonl(tiny_run / rnd / "select" / "curated.jsonl")
        n_scored = sum(1 for s in scored if s["score"] is not None)  # empty instructions get none
        assert n_scored >= 4 and len(kept) == max(1, round(n_scored * 0.5))  # top_fraction 0.5
        manifest = json.loads((tiny_run / "manifest.json").read_text())["stages"]
        assert 0.0 <= manifest[f"{rnd}/score"]["counts"]["auc"] <= 1.0
        assert manifest[f"{rnd}/select"]["counts"]["injection_checks"] == 2 * 3
        assert 0.0 <= manifest[f"{rnd}/select"]["counts"]["injection_flip_rate"] <= 1.0
    assert "spearman" in manifest["round_02/score"]["counts"]["agreement_with_prev_judge"]


def test_status_shows_stages_and_json(tiny_run):
    result = CliRunner().invoke(main, ["status", str(tiny_run), "--json"])
    assert result.exit_code == 0
    assert set(json.loads(result.output)["stages"]) == set(STAGES)
    result = CliRunner().invoke(main, ["status", str(tiny_run)])
    assert result.exit_code == 0 and "round_01/select" in result.output


def test_rerunning_a_finished_run_is_a_noop(tiny_run):
    before = _finished(tiny_run)
    result = CliRunner().invoke(main, ["run", str(TINY), "--out", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert _finished(tiny_run) == before


def test_killed_mid_augment_resumes_to_the_uninterrupted_result(tiny_run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "humpback_lite", "run", str(TINY), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pairs = out / "augment" / "pairs.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if pairs.exists() and pairs.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    done_before_kill = pairs.read_text().count("\n")
    assert 2 <= done_before_kill < 6, "the kill must land mid-augment"
    # resume through augment only (the fake-engine harness in test_kill.py covers every later stage)
    from humpback_lite import graph
    from humpback_lite.loop import Loop
    from humpback_lite.models import fetch
    from humpback_lite.recipe import load_recipe

    before = _finished(out)
    loop = Loop(load_recipe(TINY), out)
    loop.gguf = fetch(loop.card)
    ran = [p.name for p in graph.plan(loop.recipe)[:4] if loop.run_stage(p)]
    assert ran == ["augment"] and _finished(out)["backward"] == before["backward"]
    assert pairs.read_bytes() == (tiny_run / "augment" / "pairs.jsonl").read_bytes()


def test_bad_recipe_key_fails_with_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["run", str(TINY), "train.lr=1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "train.lr: unknown key" in result.output and "Traceback" not in result.output


def test_segment_command_writes_segments_jsonl(tmp_path):
    from pydoc_data.topics import topics

    (tmp_path / "doc.md").write_text("# Lists\n\n" + topics["lists"] + "\n\n# Numbers\n\n" + topics["numbers"])
    out = tmp_path / "segments.jsonl"
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "doc.md"), "-o", str(out), "--min-chars", "200"])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out, required=("text", "provenance"))
    assert rows and all(200 <= len(r["text"]) <= 3000 for r in rows)


def test_score_command_on_malformed_pairs_names_the_line(tmp_path, model_gguf):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"output": "no instruction"}\n')
    result = CliRunner().invoke(main, ["score", str(bad), "-o", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 1
    assert "pairs.jsonl:2: no (instruction, output) pair found" in result.output
    assert not (tmp_path / "s.jsonl").exists()


def test_stage_commands_chain_on_plain_files(tiny_run, tmp_path):
    run = CliRunner()
    seg = tmp_path / "segments.jsonl"
    assert run.invoke(main, ["segment", "pydoc:topics", "-o", str(seg), "--max-chars", "900",
                             "--max-segments", "3"]).exit_code == 0
    pairs = tmp_path / "pairs.jsonl"
    res = run.invoke(main, ["augment", str(seg), "-o", str(pairs), "--max-new-tokens", "12",
                            "--adapter", str(tiny_run / "backward" / "adapter.gguf")])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(pairs, required=("output",))
    assert len(rows) == 3 and all("instruction" in r for r in rows)
    # the same command resumes (nothing left to do); another setting is refused, the file kept
    whole = pairs.read_bytes()
    res = run.invoke(main, ["augment", str(seg), "-o", str(pairs), "--max-new-tokens", "12",
                            "--adapter", str(tiny_run / "backward" / "adapter.gguf")])
    assert res.exit_code == 0 and pairs.read_bytes() == whole, res.output
    res = run.invoke(main, ["augment", str(seg), "-o", str(pairs), "--max-new-tokens", "12", "--temperature", "0.2",
                            "--adapter", str(tiny_run / "backward" / "adapter.gguf")])
    assert res.exit_code == 1 and "other inputs (augment differ)" in res.output and pairs.read_bytes() == whole
    for r in rows:  # a 2-step backward model may write nothing usable; give those a question
        r["instruction"] = r["instruction"] or "What does this say?"
    (tmp_path / "fixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = tmp_path / "scored.jsonl"
    res = run.invoke(main, ["score", str(tmp_path / "fixed.jsonl"), "-o", str(scored), "--mode", "reasoning",
                            "--adapter", str(tiny_run / "round_00" / "train" / "adapter.gguf")])
    assert res.exit_code == 0, res.output
    out = read_jsonl(scored)
    assert all(r["score"] in (1, 2, 3, 4, 5) and r["mode"] == "reasoning" and "reason" in r for r in out)
    combined = tmp_path / "combined.jsonl"
    res = run.invoke(main, ["score", str(tmp_path / "fixed.jsonl"), "-o", str(combined), "--mode", "combined",
                            "--backward-adapter", str(tiny_run / "backward" / "adapter.gguf"),
                            "signals=[pmi]", "combine=[pmi,backward]"])
    assert res.exit_code == 0, res.output
    out = read_jsonl(combined)
    assert all(set(r["signals"]) >= {"pmi", "backward"} and "rubric" not in r["signals"] for r in out)
    scores = [r["score"] for r in out]  # mean percentile ranks: in [0, 1], averaging 1/2 over the file
    assert all(0 <= x <= 1 for x in scores) and abs(sum(scores) / len(scores) - 0.5) < 1e-3
    res = run.invoke(main, ["score", str(tmp_path / "fixed.jsonl"), "-o", str(tmp_path / "b.jsonl"), "--mode", "backward"])
    assert res.exit_code == 2 and "needs --backward-adapter" in res.output
    adapter = tmp_path / "adapter"
    res = run.invoke(main, ["train", str(tmp_path / "fixed.jsonl"), "-o", str(adapter), "--direction", "backward",
                            "max_steps=1", "batch_size=1", "max_length=96", "lora_r=2"])
    assert res.exit_code == 0, res.output
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter.gguf").is_file()


def test_evaluate_stage_scores_base_and_every_round(tiny_run):
    metrics = json.loads((tiny_run / "evaluate" / "metrics.json").read_text())
    assert metrics["heldout"] == 3 and metrics["judge"] == "final model (M2)"
    assert list(metrics["models"]) == ["base", "M0", "M1", "M2", "random", "all"]  # tiny.yaml has the ablation
    for name, m in metrics["models"].items():
        assert m["nll"] > 0 and m["ppl"] > 1
        if name != "base":
            v = m["vs_base"]
            assert v["n"] == 3 and v["win"] + v["tie"] + v["loss"] == 3
            assert v["win_rate"] == round((v["win"] + 0.5 * v["tie"]) / 3, 4) and 0 <= v["p_mean"] <= 1
    assert 0 <= metrics["position_bias"] <= 1
    assert [c["round"] for c in metrics["curation"]] == [1, 2] and metrics["data"]["segments"] == 6
    assert set(metrics["models"]["M2"]) >= {"vs_base", "vs_M0"}
    judgments = read_jsonl(tiny_run / "evaluate" / "judgments.jsonl")
    # M0..M2, random, all vs base; M1, M2, random, all vs M0; M2 vs random and all
    assert len(judgments) == (5 + 4 + 2) * 3
    assert all(0 <= j["p_a_first"] <= 1 and 0 <= j["p_a_second"] <= 1 for j in judgments)
    assert len(read_jsonl(tiny_run / "evaluate" / "answers.jsonl")) == 6 * 3


def test_ifeval_stage_reports_every_model_with_intervals(tiny_run):
    m = json.loads((tiny_run / "ifeval" / "metrics.json").read_text())
    assert m["prompts"] == 6 and m["subset"] == 6 and m["max_new_tokens"] == 32
    assert list(m["models"]) == ["base", "M0", "M1", "M2", "random", "all"]
    for name, v in m["models"].items():
        for k in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose"):
            assert 0 <= v[k]["ci"][0] <= v[k]["value"] <= v[k]["ci"][1] <= 100, (name, k, v[k])
        assert v["prompt_strict"]["value"] <= v["prompt_loose"]["value"]  # loose forgives, never adds failures
        assert sum(t["n"] for t in v["by_type"].values()) == m["instructions"]
        assert ("vs_base" in v) == (name != "base") and ("vs_M0" in v) == (name not in ("base", "M0"))
    answers = read_jsonl(tiny_run / "ifeval" / "ifeval.jsonl")
    assert len(answers) == 6 * 6 and all(a["response"] for a in answers)
    counts = json.loads((tiny_run / "manifest.json").read_text())["stages"]["ifeval"]["counts"]
    assert counts["average"] == {n: v["average"] for n, v in m["models"].items()}


def test_report_is_one_self_contained_page_with_the_figures(tiny_run):
    page = (tiny_run / "report" / "index.html").read_text()
    assert page.count("<svg") == 4  # funnel, score histograms, metrics by model, lengths
    for needle in ("Did it help?", "win vs base", "Instruction following (IFEval)", "Examples, round 1", "Examples, round 2", "borderline",
                   "rejected", "Timings", "Recipe", "max_segments", "Most frequent instruction openings"):
        assert needle in page, needle
    assert "pydoc" in page  # provenance of the example pairs
    # nothing fetched from elsewhere: no scripts, stylesheets, images or links to other hosts
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert 'src="http' not in page and 'href="http' not in page and "url(http" not in page


def test_report_command_rebuilds_the_page_and_prints_a_summary(tiny_run):
    (tiny_run / "report" / "index.html").unlink()
    result = CliRunner().invoke(main, ["report", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert (tiny_run / "report" / "index.html").is_file()
    assert "NLL/token" in result.output and "M2" in result.output


def test_export_loads_in_peft_and_llama_cpp_and_its_card_has_hub_metadata(tiny_run, hf_weights):
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export = tiny_run / "export"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_weights), export / "adapter")
    assert model.peft_config["default"].r == 4
    e = Engine(export / "model.gguf", n_ctx=512)
    assert e.generate(e.format([{"role": "user", "content": "Hi"}]), max_tokens=4, temperature=0.0).strip()
    e.close()
    card = (export / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft" and "humpback" in meta["tags"]
    assert "## Evaluation" in card and "| M2 |" in card and "IFEval (Zhou et al. 2023)" in card


def test_push_dry_run_lists_the_export_files(tiny_run):
    result = CliRunner().invoke(main, ["push", str(tiny_run), "--repo", "someone/tiny", "--dry-run"])
    assert result.exit_code == 0, result.output
    for name in ("README.md", "adapter.gguf", "model.gguf", "dataset.jsonl", "adapter/adapter_config.json"):
        assert name in result.output
    assert "would upload" in result.output


def test_push_without_network_fails_with_a_clear_error(tiny_run):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_dummy"}
    out = subprocess.run([sys.executable, "-m", "humpback_lite", "push", str(tiny_run), "--repo", "someone/tiny"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "cannot push to someone/tiny" in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_chat_answers_then_exits(tiny_run):
    result = CliRunner().invoke(main, ["chat", str(tiny_run), "--max-tokens", "12"],
                                input="What is a Python list?\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "model.gguf" in result.output
    reply = result.output.split("model>", 1)[1].split("you>")[0].strip()
    assert reply


def test_chat_with_an_adapter_keeps_the_conversation(tiny_run):
    result = CliRunner().invoke(main, ["chat", "--adapter", str(tiny_run / "export" / "adapter.gguf"),
                                       "--max-tokens", "8"], input="Hi\nAnd then?\n/reset\n")
    assert result.exit_code == 0, result.output  # Ctrl-D (end of input) also quits
    assert "+ adapter.gguf" in result.output and result.output.count("model>") == 2


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1 and "not a run folder" in result.output


def test_evaluate_command_with_another_judge_reruns_only_evaluation_and_export(tiny_run):
    before = _finished(tiny_run)
    result = CliRunner().invoke(main, ["evaluate", str(tiny_run), "--judge", "base"])
    assert result.exit_code == 0, result.output
    after = _finished(tiny_run)
    assert {k for k in STAGES if after[k] != before[k]} == {"evaluate", "export"}
    metrics = json.loads((tiny_run / "evaluate" / "metrics.json").read_text())
    assert metrics["judge"] == "base model"
    assert "judge: `base model`" in (tiny_run / "export" / "README.md").read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt install chromium)")
def test_report_renders_offline_in_headless_chromium(tiny_run, tmp_path):
    out = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
         "--dump-dom", (tiny_run / "report" / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("<svg") == 4 and "Did it help?" in out.stdout


def test_report_of_a_run_without_evaluation_says_how_to_get_it(tiny_run, tmp_path):
    from humpback_lite.report import write_report

    copy = tmp_path / "noeval"
    shutil.copytree(tiny_run, copy)
    shutil.rmtree(copy / "evaluate")
    shutil.rmtree(copy / "ifeval")
    page = write_report(copy).read_text()
    assert "No evaluation in this run" in page and "humpback evaluate RUN" in page
    assert page.count("<svg") == 3  # funnel, score histograms, lengths


def test_ablation_compares_curated_with_random_and_all_with_intervals(tiny_run):
    m = json.loads((tiny_run / "evaluate" / "metrics.json").read_text())
    assert {"random", "all"} <= set(m["models"])
    stages = json.loads((tiny_run / "manifest.json").read_text())["stages"]
    kept = stages["round_02/select"]["counts"]["kept"]
    assert stages["ablation_random"]["counts"]["augmented_rows"] == kept
    assert stages["ablation_all"]["counts"]["augmented_rows"] == stages["round_02/select"]["counts"]["candidates"] - \
        sum(1 for s in read_jsonl(tiny_run / "round_02" / "score" / "scored.jsonl") if s["score"] is None)
    for other in ("M0", "random", "all"):
        d = m["nll_diff"][f"M2 - {other}"]
        assert d["ci"][0] <= d["diff"] <= d["ci"][1]
        assert "ci" in m["models"]["M2"][f"vs_{other}"]
    assert all("looping" in v and "cut_at_limit" in v for v in m["models"].values())
    page = (tiny_run / "report" / "index.html").read_text()
    assert "Did curation help? (ablation)" in page and "M2 vs random" in page
