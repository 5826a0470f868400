"""jobs/pipeline.py on tiny settings on the session's local Ray: every stage's artifacts, a report with the runs'
real numbers, an answering endpoint, finished stages skipped on re-run, a bad corpus stopping at the first stage.

Then the browser pages against that served winner, in headless Chromium: the playground streams a completion, reports
its stats and shows an API error in the API's words; the runs page draws exactly the sweep's pareto.json (served, and
as report.html opened from disk). Page load times are measured and reported with the screenshots (test-artifacts/),
not asserted: the target lives in bench/browser_pages.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml
from browser import page_load_ms, save_artifacts, wait_for
from helpers import REPO, tiny_pipeline
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from minigpt_ray import cli
from minigpt_ray.cluster import free_port
from minigpt_ray.config import ConfigError
from minigpt_ray.pipeline.run import plan_pipeline, run_pipeline

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, ray_cluster):
    """The tiny pipeline run once for this module's tests: (its settings, its state); the winner stays served."""
    from ray import serve

    output = tmp_path_factory.mktemp("pipeline") / "pipeline"
    values = tiny_pipeline(output, free_port())
    try:
        yield values, run_pipeline(plan_pipeline(values))
    finally:
        serve.shutdown()


def test_pipeline_end_to_end_then_rerun_skips_finished_stages(pipeline_run, tmp_path, capsys):
    values, state = pipeline_run
    output = Path(values["output"])
    for path in (
        "pretrain/model/model.safetensors",
        "finetune/model/model.safetensors",
        "sweep/pareto.json",
        "sweep/winner/manifest.json",
        "report/report.md",
        "report/loss_pretrain.png",
        "report/loss_finetune.png",
        "report/pareto.png",
        "pipeline_state.json",
        "report/report.html",
    ):
        assert (output / path).is_file(), path
    report = (output / "report" / "report.md").read_text()
    pretrain = json.loads((output / "pretrain" / "metrics.json").read_text())
    pareto = json.loads((output / "sweep" / "pareto.json").read_text())
    assert f"{pretrain['initial_val_loss']:.3f} → {pretrain['final_val_loss']:.3f}" in report
    finetune = json.loads((output / "finetune" / "metrics.json").read_text())
    # same corpus and split: a fine-tune that really loaded the weights starts where pretraining ended
    assert finetune["partitioned_at_construction"] and finetune["zero_stage"] == 3
    assert abs(finetune["initial_val_loss"] - pretrain["final_val_loss"]) < 0.05
    assert pareto["winner"]["label"] in report and f"{pareto['winner']['perplexity']:.3f}" in report
    url = state["stages"]["serve"]["url"]
    assert f"curl {url}/v1/completions" in report and "from openai import OpenAI" in report
    assert "| winner (compressed) | ROMEO: |" in report
    sft = json.loads((output / "sft" / "metrics.json").read_text())
    assert "- zh-instruct" in (output / "sft" / "run_config.yaml").read_text()  # the sft defaults
    assert sft["lora_r"] == 4 and sft["trainable_params"] < 0.2 * sft["params"]
    assert (output / "sft" / "adapter" / "adapter_config.json").is_file()
    assert "### Supervised fine-tuning on chat data" in report and "LoRA r=4:" in report
    assert "| SFT, as a chat reply | ROMEO: |" in report and f"curl {url}/v1/chat/completions" in report
    assert plan_pipeline(values).configs["sweep"].model == str(output / "sft" / "model")  # it compresses SFT
    chat = requests.post(
        f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "好吗"}], "max_tokens": 4}
    )
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    student = min((r for r in pareto["trials"] if r.get("student_layers")), key=lambda r: r["served_perplexity"])
    assert f"The best student the sweep distilled from the fine-tuned model: **{student['label']}**" in report
    assert f"| student | {student['params']:,} |" in report and "| distilled student | ROMEO: |" in report
    reply = requests.post(f"{url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 4}, timeout=60)
    assert reply.status_code == 200
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(values))
    capsys.readouterr()
    # the same output through the command: the three finished stages are not redone
    assert cli.main(["pipeline", "--config", str(tmp_path / "p.yaml"), "--no-block"]) == 0
    logged = capsys.readouterr().err
    for stage in ("pretrain", "finetune", "sft", "sweep"):
        assert f"pipeline: {stage} already finished" in logged
    assert f"playground: {url}/ (in a browser" in logged  # the final message points to the page
    assert json.loads((output / "pretrain" / "metrics.json").read_text()) == pretrain


def test_bad_corpus_fails_before_any_stage_and_a_failing_stage_stops_the_pipeline(tmp_path, capsys):
    output = tmp_path / "bad"
    values = tiny_pipeline(output, free_port(), corpus=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match=r"^pretrain\.data\.sources: .*missing\.txt"):
        plan_pipeline(values)  # every stage's corpus is checked before the first stage starts
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(values))
    capsys.readouterr()
    assert cli.main(["pipeline", "--config", str(tmp_path / "p.yaml"), "--no-block"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pretrain.data.sources:") and "missing.txt" in err[0]
    assert not output.exists()
    # A corpus that exists but holds no text fails inside the first stage: nothing is written past it.
    (tmp_path / "empty.txt").write_text("\n\n")
    values = tiny_pipeline(output, free_port(), corpus=str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match=r"^data\.sources: .*empty\.txt is empty"):
        run_pipeline(plan_pipeline(values))
    assert not any((output / stage).exists() for stage in ("pretrain", "finetune", "sweep", "report"))


def test_bad_settings_are_named_with_their_stage_before_anything_runs(tmp_path):
    values = tiny_pipeline(tmp_path / "x", 8000)
    values["sweep"]["search"]["sparsities"] = [1.5]
    with pytest.raises(ConfigError, match=r"^sweep\.search\.sparsities: must be in \[0, 1\)"):
        plan_pipeline(values)
    values = tiny_pipeline(tmp_path / "x", 8000)
    values["finetune"]["train"]["zero_stage"] = 4
    with pytest.raises(ConfigError, match=r"^finetune\.train\.zero_stage: "):
        plan_pipeline(values)
    with pytest.raises(ConfigError, match=r"^stages: unknown stage 'deploy'"):
        plan_pipeline(tiny_pipeline(tmp_path / "x", 8000), stages=["deploy"])
    assert not (tmp_path / "x").exists()


def test_shipped_pipeline_and_sweep_configs_are_valid():
    from minigpt_ray.config import load_yaml, parse_args
    from minigpt_ray.config.bases import DEFAULT_BASE
    from minigpt_ray.config.sweep import SweepJobConfig

    plan = plan_pipeline(load_yaml(str(REPO / "configs" / "pipeline.yaml")))
    assert plan.stages == ["finetune", "sweep", "serve"]  # from the pretrained default base
    assert plan.configs["finetune"].model.name == DEFAULT_BASE and plan.configs["finetune"].lora.r == 16
    assert plan.configs["sweep"].model == str(Path("runs/pipeline/finetune/model"))
    assert plan.configs["serve"].model == str(Path("runs/pipeline/sweep/winner"))
    assert plan.chat_prompts  # the report shows every model answering the same questions
    sweep = parse_args(["--config", str(REPO / "configs" / "sweep.yaml")], "t", SweepJobConfig)
    assert sweep.search.algorithm == "optuna" and sweep.search.num_samples == 16


def _text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def _panel(driver) -> dict[str, str]:
    """The model panel's fields, read in one script call (the page redraws the panel whole)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#model-panel dd')]"
        ".map((dd) => [dd.dataset.field, dd.textContent]))"
    )


def _generate(driver, prompt: str, max_tokens: str) -> None:
    for field, value in (("prompt", prompt), ("max_tokens", max_tokens), ("seed", "7")):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "send").click()


def test_playground_streams_a_completion_with_stats_and_shows_api_errors(pipeline_run, browser):
    _, state = pipeline_run
    url = state["stages"]["serve"]["url"]
    browser.get(f"{url}/")
    load_ms = page_load_ms(browser)
    health = requests.get(f"{url}/health", timeout=30).json()
    wait_for(browser, lambda d: _panel(d).get("replicas", "?") != "?", message="model panel never filled")
    panel = _panel(browser)
    assert panel["model"] == "minigpt" and panel["runtime"] == "llama.cpp on cpu"
    assert panel["format"] == health["format"] and health["format"].startswith("GGUF ")
    assert panel["bytes"] == f"{health['model_bytes'] / 1e6:.2f} MB" and panel["replicas"] == "1"

    _generate(browser, "ROMEO:", "24")
    wait_for(browser, lambda d: d.find_element(By.ID, "stats").get_attribute("data-done"), message="no stats line")
    reply, stats = browser.find_element(By.ID, "reply").get_attribute("textContent"), _text(browser, "#stats")
    direct = requests.post(
        f"{url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0.8, "top_k": 40,
                                       "top_p": 1, "seed": 7}, timeout=60
    ).json()  # fmt: skip
    assert reply and reply == direct["choices"][0]["text"]  # the same seeded sampling, streamed into the page
    tokens = direct["usage"]["completion_tokens"]
    assert f"{direct['usage']['prompt_tokens']} prompt + {tokens} completion tokens" in stats
    assert "time to first token" in stats and "tokens/s" in stats
    save_artifacts(browser, "playground", {"page_load_ms": round(load_ms, 1), "stats": stats})

    _generate(browser, "ROMEO:", "100000")  # over limits.max_new_tokens: the API's 400, worded as the API words it
    wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed(), message="the error was not shown")
    api = requests.post(f"{url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 100000}, timeout=30)
    assert api.status_code == 400
    assert _text(browser, "#error") == f"HTTP 400: {api.json()['error']['message']}"
    save_artifacts(browser, "playground_error", {"error": _text(browser, "#error")})


def _points(driver) -> dict[str, dict]:
    return {
        p.get_attribute("data-trial"): {
            "kind": p.get_attribute("data-kind"),
            "ppl": float(p.get_attribute("data-ppl")),
            "mb": float(p.get_attribute("data-mb")),
        }
        for p in driver.find_elements(By.CSS_SELECTOR, "#pareto .point")
    }


def _check_chart(driver, pareto: dict) -> None:
    points = _points(driver)
    ok = [t for t in pareto["trials"] if t["status"] == "ok"]
    assert set(points) == {t["trial"] for t in ok}
    front = {t["trial"] for t in pareto["front"]}
    for trial in ok:
        point = points[trial["trial"]]
        assert point["ppl"] == trial["served_perplexity"] and point["mb"] == trial["served_mb"]
        expected = (
            "baseline" if trial["trial"] == "baseline"
            else "winner" if trial["trial"] == pareto["winner"]["trial"]
            else "front" if trial["trial"] in front
            else "trial"
        )  # fmt: skip
        assert point["kind"] == expected, trial["trial"]


def test_runs_page_draws_the_sweeps_pareto_front_and_the_loss_curves(pipeline_run, browser):
    values, state = pipeline_run
    output, url = Path(values["output"]), state["stages"]["serve"]["url"]
    pareto = json.loads((output / "sweep" / "pareto.json").read_text())
    browser.get(f"{url}/runs")
    load_ms = page_load_ms(browser)
    _check_chart(browser, pareto)
    winner = browser.find_element(By.CSS_SELECTOR, f'#pareto .point[data-trial="{pareto["winner"]["trial"]}"]')
    ActionChains(browser).move_to_element(winner).perform()
    wait_for(browser, lambda d: d.find_element(By.ID, "tip").is_displayed(), message="no tooltip on hover")
    tip = _text(browser, "#tip")
    assert pareto["winner"]["label"] in tip and f"perplexity {pareto['winner']['served_perplexity']:.3f}" in tip
    assert f"quant {pareto['winner']['quant']}" in tip and "tokens/s" in tip
    stages = {svg.get_attribute("data-stage") for svg in browser.find_elements(By.CSS_SELECTOR, "svg.loss")}
    assert stages == {"pretrain", "finetune", "sft"}
    assert "winner (compressed)" in _text(browser, "#samples")  # the report's samples, from pipeline_state.json
    save_artifacts(browser, "runs", {"page_load_ms": round(load_ms, 1), "points": len(_points(browser))})
    browser.get((output / "report" / "report.html").as_uri())  # the pipeline's saved copy, no server behind it
    _check_chart(browser, pareto)
    assert "winner (compressed)" in _text(browser, "#samples") and not browser.find_elements(By.CSS_SELECTOR, "nav a")
