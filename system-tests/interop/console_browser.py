"""Drives the authz-server's console in a real headless Chromium (Debian's chromium and
chromedriver, through Selenium), as an operator during an incident and as a hostile page.

Reads its task as JSON on stdin (the token never appears in a process listing):
  base        the admin listener's URL
  token       the token to revoke through the form
  gateways    how many gateways the receipt must reach
  hostile     a rule key already in force that is markup; it must show as text
  screenshot  where to save a screenshot of the console with the filled receipt (or null)

Prints one JSON object of what it saw; system-tests/tests/console.rs checks it. Every wait is
bounded; any failure raises, and the script exits non-zero.
"""

import http.server
import json
import sys
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

task = json.load(sys.stdin)
base = task["base"]
seen = {}


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,860",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def text_of(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def rows_of(driver, table_id):
    """The text of each cell of a table's body, row by row, read in one step in the page: the
    console redraws its tables as it refreshes them, and cells found one call earlier may be
    gone by the next (a stale element)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map("
        "tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText))",
        f"#{table_id} tbody tr",
    )


def attacker_site(admin_base):
    """A page on another origin of the same host (another port: same site, other origin)
    that tries to use the operator's session: two fetches with credentials and a form
    posted to the admin API."""
    page = f"""<!doctype html><html><head><title>attacker</title></head><body>
<form id="f" method="POST" action="{admin_base}/admin/revocations" enctype="text/plain">
<input name='{{"subject":"csrf-form","reason":"x","pad":"' value='"}}'>
</form>
<script>
const opts = {{ method: 'POST', credentials: 'include', mode: 'no-cors' }};
Promise.allSettled([
  fetch('{admin_base}/console/logout', opts),
  fetch('{admin_base}/admin/revocations', {{ ...opts, headers: {{ 'Content-Type': 'text/plain' }},
        body: JSON.stringify({{ subject: 'csrf-fetch', reason: 'csrf' }}) }}),
  fetch('{admin_base}/console/session', {{ credentials: 'include' }}).then(r => r.text()),
]).then(results => {{
  document.title = 'fetched:' + results.map(r => r.status).join(',');
  document.getElementById('f').submit();
}});
</script></body></html>""".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


driver = browser()
try:
    wait = WebDriverWait(driver, 20, poll_frequency=0.05)
    driver.get(base + "/console")
    wait.until(lambda d: d.find_element(By.ID, "login-view").is_displayed())

    # A wrong secret: refused, said so, no session.
    driver.find_element(By.ID, "login-id").send_keys("admin")
    driver.find_element(By.ID, "login-secret").send_keys("not-the-secret")
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: text_of(d, "login-error") != "")
    seen["wrong_secret_error"] = text_of(driver, "login-error")
    seen["cookies_after_wrong_secret"] = len(driver.get_cookies())

    # The right one.
    driver.find_element(By.ID, "login-id").clear()
    driver.find_element(By.ID, "login-id").send_keys("admin")
    driver.find_element(By.ID, "login-secret").send_keys("admin-secret")
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_element(By.ID, "app-view").is_displayed())
    seen["who"] = text_of(driver, "who")
    seen["cookies"] = [
        {k: c.get(k) for k in ("name", "secure", "httpOnly", "sameSite", "path")}
        for c in driver.get_cookies()
    ]
    seen["cookie_visible_to_script"] = driver.execute_script("return document.cookie")

    # The fleet: every gateway listed, ready.
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr.ok")) == task["gateways"]
    )
    seen["fleet"] = rows_of(driver, "fleet-table")
    seen["outbox_nats"] = text_of(driver, "outbox-nats")

    # A rule whose key is markup shows as text, and runs nothing.
    Select(driver.find_element(By.ID, "search-kind")).select_by_value("subject")
    driver.find_element(By.ID, "search-value").send_keys(task["hostile"])
    driver.find_element(By.ID, "search-submit").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-table tbody tr")) == 1)
    seen["hostile_row"] = rows_of(driver, "search-table")[0]
    seen["markup_elements_in_results"] = len(
        driver.find_elements(By.CSS_SELECTOR, "#search-table img, #search-table script, #search-table b")
    )
    seen["pwned"] = driver.execute_script("return window.__pwned === undefined ? null : window.__pwned")
    seen["title"] = driver.title

    # Revoke the token through the form, and watch the receipt fill in.
    Select(driver.find_element(By.ID, "revoke-kind")).select_by_value("token")
    driver.find_element(By.ID, "revoke-value").send_keys(task["token"])
    driver.find_element(By.ID, "revoke-reason").send_keys("laptop stolen (console test)")
    started = time.monotonic()
    driver.find_element(By.ID, "revoke-submit").click()
    counts = []

    def enforced(d):
        count = text_of(d, "receipt-count")
        if not counts or counts[-1] != count:
            counts.append(count)
        if text_of(d, "revoke-error"):
            raise AssertionError("revocation refused: " + text_of(d, "revoke-error"))
        return text_of(d, "receipt-state") == "enforced everywhere"

    WebDriverWait(driver, 30, poll_frequency=0.02).until(enforced)
    seen["receipt_seconds"] = round(time.monotonic() - started, 3)
    seen["receipt_counts"] = counts
    seen["receipt_count"] = text_of(driver, "receipt-count")
    seen["receipt_rows"] = rows_of(driver, "receipt-table")
    seen["receipt_id"] = text_of(driver, "receipt-id")
    # Every rule in force: the markup subject and the token just revoked.
    Select(driver.find_element(By.ID, "search-kind")).select_by_value("")
    driver.find_element(By.ID, "search-value").clear()
    driver.find_element(By.ID, "search-submit").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-table tbody tr")) == 2)
    seen["all_rules"] = [row[:3] for row in rows_of(driver, "search-table")]
    if task.get("screenshot"):
        driver.save_screenshot(task["screenshot"])
    # What the browser reported while the operator worked: a policy violation would show.
    seen["console_messages"] = [e["message"] for e in driver.get_log("browser")]

    # A page on another origin tries to use the session.
    attacker = attacker_site(base)
    driver.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
    wait.until(lambda d: d.title.startswith("fetched:") or "access_denied" in d.page_source)
    wait.until(lambda d: "access_denied" in d.page_source)
    seen["form_post_answer"] = driver.find_element(By.TAG_NAME, "body").text
    attacker.shutdown()
    seen["attack_messages"] = [e["message"] for e in driver.get_log("browser")]

    # Still logged in: the attacker's logout did nothing.
    driver.get(base + "/console")
    wait.until(
        lambda d: d.find_element(By.ID, "app-view").is_displayed()
        or d.find_element(By.ID, "login-view").is_displayed()
    )
    seen["logged_in_after_attack"] = driver.find_element(By.ID, "app-view").is_displayed()

    # Logout ends the session: a reload shows the login form.
    driver.find_element(By.ID, "logout").click()
    wait.until(lambda d: d.find_element(By.ID, "login-view").is_displayed())
    driver.get(base + "/console")
    wait.until(lambda d: d.find_element(By.ID, "login-view").is_displayed())
    seen["logged_out"] = not driver.find_element(By.ID, "app-view").is_displayed()
    seen["cookies_after_logout"] = len(driver.get_cookies())
finally:
    driver.quit()

print(json.dumps(seen))
