"""The playground page at ``/`` in a real headless Chromium (Debian's ``chromium`` +
``chromium-driver``, driven by Selenium; ``.ci/run`` installs them). Skips where they are absent."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import logit_swarm as ls

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from logit_swarm.serve import make_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no headless browser: install Debian's 'chromium' "
                                "and 'chromium-driver' (apt; .ci/run does) to run the playground test")


def browser():
    """A headless Chromium (no downloads: the system browser and driver)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)


def run_page(server, prompt: str, weights: list[float] | None, screenshot: Path | None = None, max_tokens: int = 12):
    """Drive the page: set the prompt (and sliders), generate, wait for the end. Returns the spans'
    (text, expert, title) and the status line."""
    drv = browser()
    try:
        drv.get(server.url.rsplit("/v1", 1)[0] + "/")
        wait = WebDriverWait(drv, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]"))
        box = drv.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(prompt)
        mt = drv.find_element(By.ID, "max-tokens")
        mt.clear()
        mt.send_keys(str(max_tokens))
        if weights is not None:
            for i, w in enumerate(weights):  # range inputs take a value set by script, as a user's drag would
                drv.execute_script("const s = document.getElementById(arguments[0]); s.value = arguments[1];"
                                   "s.dispatchEvent(new Event('input'));", f"w-{i}", str(w))
            assert Select(drv.find_element(By.ID, "recipe")).first_selected_option.get_attribute("value") == "custom"
        drv.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
        spans = [(s.get_attribute("textContent"), int(s.get_attribute("data-expert")), s.get_attribute("title"))
                 for s in drv.find_elements(By.CSS_SELECTOR, "#output span.unit")]
        status = drv.find_element(By.ID, "status").text
        if spans:  # hover shows the per-expert probabilities
            webdriver.ActionChains(drv).move_to_element(drv.find_elements(By.CSS_SELECTOR, "#output span.unit")[0]
                                                        ).perform()
        hover = drv.find_element(By.ID, "hover").text
        if screenshot is not None:
            drv.save_screenshot(str(screenshot))
        return spans, status, hover
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    torch.set_num_threads(1)
    ens = ls.Ensemble([ls.load_expert(tiny_dirs["gpt2_a"]), ls.load_expert(tiny_dirs["gpt2_b"])], weights=[0.5, 0.5])
    s = make_server(ens, port=0, model_name="pair").start()
    yield s
    s.shutdown()


def test_playground_streams_and_colours_by_expert(pair, experts, tmp_path):
    shot = Path(os.environ.get("LOGIT_SWARM_PLAYGROUND_SHOT", tmp_path / "playground.png"))
    spans, status, hover = run_page(pair, "Once upon", [0.9, 0.1], screenshot=shot)
    assert status.startswith("done"), status
    ref = ls.Ensemble([experts["gpt2_a"], experts["gpt2_b"]], weights=[0.9, 0.1])
    want = ref.generate(["Once upon"], max_new_tokens=12, return_details=True)[0]
    assert "".join(t for t, _, _ in spans) == want.text  # the streamed text, weights from the sliders
    assert len(spans) == len(want.units)  # one coloured piece per generated unit
    for _, best, title in spans:
        probs = []
        for e in ref.experts:  # the expert whose probability of this unit is highest gets the colour
            assert f"{e.name}: p = " in title
            probs.append(float(title.split(f"{e.name}: p = ")[1].split()[0]))
        assert best == max(range(len(probs)), key=probs.__getitem__)
        mixture = float(title.split("mixture p = ")[1].split()[0])
        assert math.isclose(mixture, 0.9 * probs[0] + 0.1 * probs[1], abs_tol=2e-4)
    assert "gpt2_a: p = " in hover
    assert shot.stat().st_size > 1000


def test_playground_uses_the_served_recipe_by_default(pair, experts):
    spans, status, _ = run_page(pair, "Hello", None, max_tokens=6)
    want = ls.Ensemble([experts["gpt2_a"], experts["gpt2_b"]], weights=[0.5, 0.5]).generate(["Hello"], max_new_tokens=6)
    assert status.startswith("done") and "".join(t for t, _, _ in spans) == want[0]
