"""Every dashboard page at a phone's width (390x844) and a desktop's (1280x900), in Chromium.

For each page: nothing is wider than the window, the top bar is one row with every item
on screen, and the page's own controls are visible: the keys page's Regenerate and
Revoke, the usage chart's labels at a readable size, not overlapping.  Screenshots go to
tests/artifacts/dashboard/layout-<width>-<page>.png.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import ARTIFACTS
from .web import PASSWORD, new_email

pytestmark = [pytest.mark.browser, pytest.mark.gvisor, pytest.mark.postgres]

SIZES = [(390, 844), (1280, 900)]

_LAYOUT = """
const bar = document.querySelector("header.site .bar");
const box = bar.getBoundingClientRect();
const links = bar.querySelector(".links").getBoundingClientRect();
const items = [...bar.querySelectorAll(".brand, .links a, .who a, .who button")]
  .filter((e) => e.getClientRects().length > 0)
  .map((e) => { const r = e.getBoundingClientRect();
                // A link the list has to scroll to is not on screen either.
                const clip = e.closest(".links") ? links : {left: 0, right: window.innerWidth};
                return {text: e.textContent.trim(), left: r.left, right: r.right,
                        top: r.top, bottom: r.bottom, clipLeft: clip.left,
                        clipRight: clip.right}; });
// Only code blocks may scroll sideways (inside themselves); nothing else is cut off
// (but for what is only there for screen readers).
const wide = [...document.querySelectorAll("main *, header *")]
  .filter((e) => e.getClientRects().length > 0
               && e.getBoundingClientRect().right > window.innerWidth + 0.5
               && !e.closest("pre, .sr-only, table.cards thead"))
  .slice(0, 5).map((e) => e.tagName + "." + e.className + "#" + e.id);
return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
        barHeight: box.height, items: items, wide: wide};
"""


def _size(driver: Any, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def _check_layout(driver: Any, label: str) -> dict[str, Any]:
    m = driver.execute_script(_LAYOUT)
    assert m["scrollWidth"] <= m["innerWidth"], (label, m["scrollWidth"], m["wide"])
    assert not m["wide"], (label, m["wide"])
    items = m["items"]
    assert items, label
    # One row: every item of the top bar sits on the same line, all of it on screen.
    tops = {round(i["top"] + (i["bottom"] - i["top"]) / 2) for i in items}
    assert max(tops) - min(tops) <= 8, (label, items)
    assert m["barHeight"] <= 64, (label, m["barHeight"])
    for item in items:
        assert item["left"] >= item["clipLeft"] - 0.5, (label, item)
        assert item["right"] <= item["clipRight"] + 0.5, (label, item)
    return dict(m)


def _visible_on_screen(driver: Any, element: Any) -> bool:
    return bool(
        driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return arguments[0].getClientRects().length > 0 && r.width > 0 && r.left >= 0"
            " && r.right <= window.innerWidth;",
            element,
        )
    )


def _check_chart(driver: Any, label: str) -> None:
    labels = driver.execute_script(
        """
        const svg = [...document.querySelectorAll("svg.chart")]
          .find((s) => s.getClientRects().length > 0);
        const box = svg.getBoundingClientRect();
        return [...svg.querySelectorAll("text.axis")].map((t) => {
          const r = t.getBoundingClientRect();
          return {text: t.textContent, left: r.left, right: r.right, top: r.top,
                  height: r.height, boxLeft: box.left, boxRight: box.right};
        });
        """
    )
    assert len(labels) >= 7, (label, labels)
    for text in labels:
        assert text["height"] >= 10, (label, text)  # rendered text at least ~10 px tall
        assert text["boxLeft"] <= text["left"], (label, text)  # and all of it in the chart
        assert text["right"] <= text["boxRight"], (label, text)
    dates = sorted((t for t in labels if not t["text"][0].isdigit()), key=lambda t: t["left"])
    assert len(dates) >= 3, (label, dates)
    for a, b in itertools.pairwise(dates):
        assert a["right"] < b["left"], (label, a, b)  # no overlapping date labels


def test_every_page_fits_phones_and_desktops(cinch_live, browser):
    base = cinch_live.base_url
    b = browser
    public = ["/", "/docs", "/signup", "/login", "/dashboard/no-such-page"]
    for width, height in SIZES:
        _size(b, width, height)
        for path in public:
            b.get(base + path)
            _check_layout(b, f"{width} {path}")
            _shot(b, f"layout-{width}-public{path.replace('/', '-')}")
    assert "Page not found" in b.find_element(By.TAG_NAME, "h1").text

    # Sign up (the key is shown once on the keys page), run code twice, see it all.
    _size(b, *SIZES[0])
    b.get(base + "/signup")
    b.find_element(By.ID, "email").send_keys(new_email("layout"))
    b.find_element(By.ID, "password").send_keys(PASSWORD)
    b.find_element(By.ID, "signup-submit").click()
    WebDriverWait(b, 30).until(lambda d: d.current_url == base + "/dashboard/keys")  # PRG
    key = b.find_element(By.ID, "new-key").text
    _check_layout(b, "390 keys with the new key")
    assert _visible_on_screen(b, b.find_element(By.ID, "copy-key"))
    _shot(b, "layout-390-keys-new-key")
    run_ids = []
    for code in ("print('hello from a phone')", "import sys; sys.exit(3)"):
        r = httpx.post(
            base + "/run",
            json={"code": code},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        run_ids.append(r.headers["X-Request-Id"])

    private = [
        "/dashboard/usage",
        "/dashboard/keys",
        "/dashboard/runs",
        f"/dashboard/runs/{run_ids[0]}",
        "/dashboard/account",
        "/dashboard/topup",
        "/dashboard/no-such-page",
    ]
    for width, height in SIZES:
        _size(b, width, height)
        for path in private:
            b.get(base + path)
            label = f"{width} {path}"
            _check_layout(b, label)
            name = path.replace("/dashboard/", "").replace("/", "-").replace(run_ids[0], "one")
            _shot(b, f"layout-{width}-{name}")
            if path == "/dashboard/keys":
                for text in ("Regenerate", "Revoke"):
                    button = b.find_element(By.XPATH, f"//table[@id='keys']//button[.='{text}']")
                    assert _visible_on_screen(b, button), (label, text)
            elif path == "/dashboard/usage":
                _check_chart(b, label)
                link = b.find_element(By.CSS_SELECTOR, f"a[href='/dashboard/runs/{run_ids[1]}']")
                assert _visible_on_screen(b, link), label
                times = b.find_elements(By.CSS_SELECTOR, "#runs td.time")
                for cell in times:  # a date on one line, not four
                    assert cell.size["height"] <= 48, (label, cell.size)
            elif path.startswith("/dashboard/runs/"):
                assert b.find_element(By.ID, "stdout").text == "hello from a phone"
                assert b.find_element(By.ID, "exit-code").text == "0"
            elif path == "/dashboard/runs":
                assert len(b.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2

    # From the usage table to a run's page, then filter the runs list, on the phone.
    _size(b, *SIZES[0])
    b.get(base + "/dashboard/usage")
    b.find_element(By.CSS_SELECTOR, f"a[href='/dashboard/runs/{run_ids[1]}']").click()
    WebDriverWait(b, 30).until(lambda d: d.current_url.endswith(run_ids[1]))
    assert b.find_element(By.ID, "exit-code").text == "3"
    b.get(base + "/dashboard/runs?termination=exited&language=javascript")
    assert b.find_element(By.ID, "no-runs").text == "No runs match these filters."
    _check_layout(b, "390 runs filtered")

    # The favicon is the logo.
    icon = b.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    assert icon.endswith("/assets/logo.svg")
    assert httpx.get(icon).headers["content-type"].startswith("image/svg+xml")
    b.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
