"""The playground in headless Chromium against a Serve app with an API key, under a route prefix: the page asks for
the key, keeps it in the tab's sessionStorage only, and a chat turn streams in; the runs page then needs the key
for its data."""

from __future__ import annotations

import json

import pytest
import requests
from browser import save_artifacts, wait_for
from selenium.webdriver.common.by import By

from minigpt_ray.cluster import free_port
from minigpt_ray.config import ServeJobConfig
from minigpt_ray.serving.app import deploy

pytestmark = pytest.mark.usefixtures("ray_cluster")
KEY = "s3cret-playground-key"


@pytest.fixture(scope="module")
def keyed_app(tiny_zh_model, tmp_path_factory):
    from ray import serve

    runs = tmp_path_factory.mktemp("runs")
    history = [{"step": 0, "val_loss": 5.7}, {"step": 8, "val_loss": 5.3}]
    curve = {"model": "tiny", "initial_val_ppl": 300.0, "final_val_ppl": 200.0, "history": history,
             "train_curve": [[4, 5.5], [8, 5.2]]}  # fmt: skip
    (runs / "metrics.json").write_text(json.dumps(curve))
    cfg = ServeJobConfig(model=tiny_zh_model["dir"], port=free_port(), api_key=KEY, runs_dir=str(runs))
    cfg.app_name, cfg.route_prefix = "keyed", "/keyed"
    cfg.scaling.max_replicas, cfg.scaling.cpus_per_replica = 1, 0.5
    cfg.limits.max_prompt_tokens, cfg.limits.max_new_tokens = 128, 32
    yield deploy(cfg.validate())
    serve.shutdown()  # the next module's app starts Serve afresh, on its own port


def _panel_model(driver) -> str:
    return driver.execute_script("return document.querySelector('#model-panel dd[data-field=\"model\"]')?.textContent")


def test_the_page_asks_for_the_key_keeps_it_in_the_tab_and_chats(keyed_app, browser):
    browser.get(f"{keyed_app}/")
    wait_for(browser, lambda d: d.find_element(By.ID, "key-box").is_displayed(), message="no key prompt")
    assert _panel_model(browser) == "HTTP 401"
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "save-key").click()
    wait_for(browser, lambda d: _panel_model(d) == "minigpt", message="the key was not used")
    assert not browser.find_element(By.ID, "key-box").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('minigpt-api-key')") == KEY
    assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []

    browser.find_element(By.ID, "mode-chat").click()
    for field, value in (("prompt", "经济"), ("max_tokens", "8"), ("temperature", "0")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "send").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "stats").get_attribute("data-done"), message="no reply")
    reply = browser.find_element(By.ID, "reply").get_attribute("textContent")
    direct = requests.post(
        f"{keyed_app}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "经济"}], "max_tokens": 8, "temperature": 0},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ).json()
    assert reply == direct["choices"][0]["message"]["content"]
    roles = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#output .msg b")]
    assert roles == ["user", "assistant"]
    save_artifacts(browser, "playground_chat", {"stats": browser.find_element(By.ID, "stats").text})


def test_the_runs_page_fetches_its_data_with_the_key(keyed_app, browser):
    assert requests.get(f"{keyed_app}/runs/data.json", timeout=30).status_code == 401
    page = requests.get(f"{keyed_app}/runs", timeout=30).text
    assert '"needs_key": true' in page and "5.7" not in page  # no data without the key
    browser.get(f"{keyed_app}/")  # the key is in this tab's sessionStorage from the test before
    browser.execute_script(f"sessionStorage.setItem('minigpt-api-key', '{KEY}')")
    browser.get(f"{keyed_app}/runs")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'svg.loss[data-stage="training"] circle'))
    assert len(browser.find_elements(By.CSS_SELECTOR, 'svg.loss[data-stage="training"] circle')) == 2
