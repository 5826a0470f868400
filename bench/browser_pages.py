"""The browser pages against the quickstart's served winner, in headless Chromium: page load time of the playground
(/) and the runs page (/runs) from the local server, and the playground's own stats for a streamed completion.

  .venv/bin/python bench/browser_pages.py [--run runs/pipeline] [--loads 5] [--screenshots docs/img]

Serves `<run>/sweep/winner` as `minigpt serve` does (embedded Ray, its runs page reading `<run>`), loads each page
`--loads` times in a fresh tab state (Navigation Timing: navigation start to the load event; median and worst
reported), then types a prompt into the playground and reports the time to first token, tokens/s and tokens its
stats line shows. Screenshots of both pages are saved (the docs' images). Needs scripts/setup_browser.sh.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import page_load_ms, start_chromium, wait_for  # noqa: E402

from minigpt_ray.cluster import connect_ray, free_port  # noqa: E402
from minigpt_ray.config.serve import ServeJobConfig  # noqa: E402
from minigpt_ray.serving.app import deploy  # noqa: E402


def load_times(driver, url: str, loads: int) -> list[float]:
    times = []
    for _ in range(loads):
        driver.get("about:blank")
        driver.get(url)
        times.append(page_load_ms(driver))
    return times


def stream_once(driver, url: str, prompt: str) -> str:
    """Generate in the playground (seeded, 48 tokens) and return its stats line."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, '#model-panel dd[data-field="replicas"]').text != "?")
    for field, value in (("prompt", prompt), ("max_tokens", "48"), ("seed", "1234")):
        driver.find_element(By.ID, field).clear()
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "send").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "stats").get_attribute("data-done"))
    return driver.find_element(By.ID, "stats").text


def hover_winner(driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    winner = driver.find_element(By.CSS_SELECTOR, '#pareto .point[data-kind="winner"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", winner)
    ActionChains(driver).move_to_element(winner).perform()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/pipeline", help="a pipeline output with sweep/winner")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--prompt", default="今天天气")
    parser.add_argument("--screenshots", default="", help="directory for playground.png and runs.png")
    args = parser.parse_args()
    run = Path(args.run).resolve()
    connect_ray("")
    url = deploy(ServeJobConfig(model=str(run / "sweep" / "winner"), port=free_port()).validate())
    driver = start_chromium()
    try:
        playground = load_times(driver, f"{url}/", args.loads)
        runs = load_times(driver, f"{url}/runs", args.loads)
        if args.screenshots:
            hover_winner(driver)
            driver.save_screenshot(str(Path(args.screenshots) / "runs.png"))
        stats = stream_once(driver, f"{url}/", args.prompt)
        if args.screenshots:
            driver.save_screenshot(str(Path(args.screenshots) / "playground.png"))
    finally:
        driver.quit()
    print("\n| page | median load ms | worst load ms |\n|---|---|---|")
    for name, times in (("playground `/`", playground), ("runs `/runs`", runs)):
        print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} |")
    print(f"\nplayground stats for {args.prompt!r}: {stats}")


if __name__ == "__main__":
    main()
