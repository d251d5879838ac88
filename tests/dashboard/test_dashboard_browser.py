"""The dashboard in a real headless Chromium against a live server (dev payments).

One user's whole story: sign up, see the key once, run code with it through the Python
SDK, see the run in usage, regenerate the key (the old one gets 401), top up with the
development provider, log out and in again.  Screenshots of each page are saved under
tests/artifacts/dashboard/.
"""

from __future__ import annotations

import pytest
from pangolin import CinchError, Sandbox
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import screenshot
from .web import PASSWORD, new_email

pytestmark = [pytest.mark.browser, pytest.mark.gvisor, pytest.mark.postgres]


def _load(driver, action) -> None:
    """Do ``action`` (a click that navigates) and wait until the next page has loaded."""
    # A mark on the old page's window, not a reference to one of its elements: while the
    # page is replaced, chromedriver can answer an element check with a generic "Node with
    # given id does not belong to the document" instead of a stale-element error. A new
    # document gets a new window object without the mark.
    driver.execute_script("window.__cinchOldPage = true")
    action()
    wait = WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,))
    wait.until(lambda d: d.execute_script("return window.__cinchOldPage !== true"))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


def _click(driver, by: str, value: str) -> None:
    _load(driver, driver.find_element(by, value).click)


def _number(driver, element_id: str) -> int:
    return int(driver.find_element(By.ID, element_id).text.replace(",", ""))


def _fill(driver, **fields: str) -> None:
    for name, value in fields.items():
        element = driver.find_element(By.ID, name)
        element.clear()
        element.send_keys(value)


def test_sign_up_run_see_usage_regenerate_and_top_up(cinch_live, browser):
    base = cinch_live.base_url
    b = browser

    # Home -> sign up.
    b.get(base + "/")
    assert "Run untrusted code in one API call." in b.find_element(By.TAG_NAME, "h1").text
    screenshot(b, "01-home")
    _click(b, By.LINK_TEXT, "Sign up")
    assert b.current_url == base + "/signup"

    # A bad form shows clear errors and keeps the e-mail.
    _fill(b, email="not-an-email", password="short")
    _click(b, By.ID, "signup-submit")
    errors = [e.text for e in b.find_elements(By.CSS_SELECTOR, ".field-error")]
    assert errors == [
        "Enter a valid e-mail address, like you@example.com.",
        "Use at least 8 characters.",
    ]
    assert b.find_element(By.ID, "email").get_attribute("value") == "not-an-email"
    screenshot(b, "02-signup-errors")

    email = new_email("browser")
    _fill(b, email=email, password=PASSWORD)
    _click(b, By.ID, "signup-submit")

    # The key, shown once, with a copy button and a warning.
    key = b.find_element(By.ID, "new-key").text
    assert key.startswith("cinch_live_")
    assert len(key) >= len("cinch_live_") + 43
    assert "will not be shown again" in b.find_element(By.ID, "reveal").text
    b.find_element(By.ID, "copy-key").click()  # no navigation
    assert b.find_element(By.ID, "copy-key").text in ("Copied", "Copy")
    screenshot(b, "03-keys-new-key")
    b.get(base + "/dashboard/keys")
    assert key not in b.page_source
    assert key[-4:] in b.find_element(By.ID, "keys").text
    assert not b.find_elements(By.ID, "new-key")

    # Run code with the key through the Python SDK.
    result = Sandbox(api_key=key, base_url=base).run("print(6 * 7)")
    assert result.stdout == "42\n"
    assert result.exit_code == 0

    # The run is in usage, charged, next to the sign-up grant.
    _click(b, By.LINK_TEXT, "Usage")
    rows = b.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    assert len(rows) == 1
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "python"
    assert cells[2] == f"{result.duration_ms:,} ms"
    charged = int(cells[3].replace(",", ""))
    assert charged == result.duration_ms
    assert cells[4] == "exited"
    assert cells[5] == "0"
    assert _number(b, "balance") == 10_000 - charged
    kinds = [
        r.get_attribute("data-kind") for r in b.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")
    ]
    assert kinds == ["charge", "grant"]
    assert b.find_element(By.CSS_SELECTOR, "svg.chart").get_attribute("role") == "img"
    # Two drawings, one shown: the desktop one here (the phone one is for narrow screens).
    assert len(b.find_elements(By.CSS_SELECTOR, "svg.chart.wide rect.bar")) == 30
    assert not b.find_element(By.CSS_SELECTOR, "svg.chart.narrow").is_displayed()
    screenshot(b, "04-usage")

    # Regenerate: a new key is shown once, and the old key fails on the very next request.
    _click(b, By.LINK_TEXT, "API keys")
    confirmed = []

    def regenerate() -> None:
        b.find_element(By.CSS_SELECTOR, "#keys form[action$='/regenerate'] button").click()
        alert = WebDriverWait(b, 10).until(expected_conditions.alert_is_present())
        confirmed.append(alert.text)
        alert.accept()

    _load(b, regenerate)
    assert "stops working immediately" in confirmed[0]
    new_key = b.find_element(By.ID, "new-key").text
    assert new_key.startswith("cinch_live_")
    assert new_key != key
    assert "The old key was revoked" in b.find_element(By.ID, "notice").text
    screenshot(b, "05-keys-regenerated")
    with pytest.raises(CinchError) as caught:
        Sandbox(api_key=key, base_url=base).run("print(1)")
    assert caught.value.status == 401
    assert Sandbox(api_key=new_key, base_url=base).run("print('new')").stdout == "new\n"
    keys_text = b.find_element(By.ID, "keys").text
    assert new_key[-4:] in keys_text
    assert key[-4:] not in keys_text

    # Top up with the development provider.
    _click(b, By.LINK_TEXT, "Top up")
    assert "Development payment provider" in b.find_element(By.ID, "dev-provider").text
    assert "1 USD buys 10,000 credits" in b.find_element(By.ID, "price").text
    before = _number(b, "balance")
    _fill(b, amount="4")
    assert "The smallest top-up is $5." in b.find_element(By.ID, "amount-credits").text  # live hint
    _click(b, By.ID, "topup-submit")
    assert "The smallest top-up is $5." in b.find_element(By.ID, "form-errors").text
    assert _number(b, "balance") == before
    _fill(b, amount="7.50")
    assert b.find_element(By.ID, "amount-credits").text == "You get 75,000 credits."
    screenshot(b, "06-topup")
    _click(b, By.ID, "topup-submit")
    assert "Added 75,000 credits" in b.find_element(By.ID, "notice").text
    assert _number(b, "balance") == before + 75_000
    screenshot(b, "07-topup-done")
    _click(b, By.LINK_TEXT, "Usage")
    assert _number(b, "balance") == before + 75_000
    kinds = [
        r.get_attribute("data-kind") for r in b.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")
    ]
    assert kinds[0] == "topup"

    # Docs are public and show the examples.
    _click(b, By.LINK_TEXT, "Docs")
    assert b.find_element(By.ID, "example-curl").text.startswith(f"curl -s {base}/run")
    screenshot(b, "08-docs")

    # Log out, pages are closed; log in again lands on usage.
    _click(b, By.ID, "logout")
    assert "You are logged out." in b.find_element(By.CSS_SELECTOR, "[role=status]").text
    b.get(base + "/dashboard/usage")
    assert b.current_url == base + "/login?next=/dashboard/usage"
    _fill(b, email=email, password="wrong password")
    _click(b, By.ID, "login-submit")
    assert "not right" in b.find_element(By.ID, "form-errors").text
    screenshot(b, "09-login-error")
    _fill(b, email=email, password=PASSWORD)
    _click(b, By.ID, "login-submit")
    assert b.current_url == base + "/dashboard/usage"
    assert _number(b, "balance") == before + 75_000
