"""The chat page at /, driven in a real headless Chromium (Debian's chromium + chromedriver, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import shot
from tests.compose_helpers import Project
from tests.media import png

pytestmark = pytest.mark.webui


def test_page_is_served_without_the_key(appliance: Project) -> None:
    r = requests.get(f"{appliance.url}/", timeout=10)
    assert r.status_code == 200 and "<title>llmpi</title>" in r.text
    assert len(r.content) < 20_000  # one small file, no framework


def test_chat_in_the_browser(appliance: Project, api_key: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 120)
    browser.get(f"{appliance.url}/")
    browser.execute_script("localStorage.clear()")
    browser.get(f"{appliance.url}/")
    wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))

    # a wrong key is refused, and said so
    browser.find_element(By.ID, "key-input").send_keys("sk-wrong-key-0000")
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "key-error"), "refused (401)"))
    shot(browser, "wrong-key")

    # the right key connects, and the header shows the model
    field = browser.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(api_key)
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.invisibility_of_element_located((By.ID, "key-dialog")))
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "gemma-3-270m-q4_k_m"))
    assert "context" in browser.find_element(By.ID, "info").text

    # a message streams back, with the speed of the reply
    browser.find_element(By.ID, "prompt").send_keys("Building a website can be done in 10 simple steps:")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
    replies = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    assert replies and replies[-1].text.strip()
    shot(browser, "chat")

    # an image for a model without a projector: the page explains the recipe's "mmproj missing" moment
    picture = tmp_path / "gradient.png"
    picture.write_bytes(png(640, 480))
    browser.find_element(By.ID, "attach-input").send_keys(str(picture))
    wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "cannot see images"))
    browser.find_element(By.ID, "prompt").send_keys("What is in this image?")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "started without a vision projector (mmproj)"))
    errors = browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    assert any("Serve a vision model" in e.text for e in errors)
    shot(browser, "no-mmproj")
    # the key survives a reload (kept in this browser)
    browser.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "gemma-3-270m-q4_k_m"))
