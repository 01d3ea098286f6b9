"""0034: the web dashboard of `mailvault serve`, end to end in headless Chromium (Debian's
chromium, driven by Playwright; no browser is downloaded).

The scenario:
- a wrong token is refused on the page; the right token logs in;
- the overview shows the live worker and the tenant;
- the tenant page has a "Run now" button, which starts a run;
- the running mailbox's message count is seen to change on the page while it runs, and the
  page shows it done, with the count that status reports;
- the dead-letter page lists a failed mailbox and retries it;
- the page's scripts raise no error under its Content-Security-Policy;
- the page shows a remote error message as text, never as HTML.
Chunks of 10 messages make the 400-message mailbox's progress visible in steps, and the page
is set to refresh every 200 ms (sessionStorage "mv-poll-ms")."""
import shutil

from playwright.sync_api import sync_playwright

from mvtest import *

t = f"dash-{SUFFIX}"
big, bad = f"dora-{SUFFIX}", f"ed-{SUFFIX}"
seed(big, "pw-dora", 400, folders="INBOX,Sent", seed=71, mean_kb=4)
seed(bad, "pw-ed", 2, folders="INBOX", seed=72)
add_tenant(t)
add_profile(t, "imap", [(big, "pw-dora")])
add_profile(t, "broken", [(bad, "<img src=x onerror=alert(1)>")])  # a hostile-looking password
token = cli("token", "add", "--name", f"dash-{SUFFIX}").stdout.strip()
chromium = shutil.which("chromium")
check(chromium is not None, "Debian's chromium is installed (tests/run.sh installs it)")

with AdminServer() as srv, sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and "401" not in m.text else None)
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(srv.url + "/")
    page.evaluate("sessionStorage.setItem('mv-poll-ms', '200')")  # refresh 5 times a second
    check(page.get_by_test_id("token").is_visible(), "the dashboard asks for a token")
    page.get_by_test_id("token").fill("mvt_" + "1" * 64)
    page.get_by_test_id("login").click()
    page.get_by_test_id("login-error").filter(has_text="refused").wait_for(timeout=15000)
    check(True, "a wrong token is refused on the page")
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("login").click()

    with Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=10) as w:
        page.locator(f'[data-testid="worker-row"]:has-text("{w.ids[0]}")').filter(
            has_text="alive").wait_for(timeout=30000)
        check(int(page.get_by_test_id("workers-alive").inner_text()) >= 1,
              "the overview shows the live worker")
        page.locator(f'[data-tenant="{t}"] a').click()
        page.get_by_test_id("tenant-name").filter(has_text=t).wait_for(timeout=15000)
        page.get_by_test_id("run-imap").click()
        page.get_by_test_id("run-message").filter(has_text="started").wait_for(timeout=15000)
        check(True, "Run now started a run from the page")
        row = page.locator(f'[data-mailbox="{big}"]')
        seen = set()

        def progress():
            state = row.get_by_test_id("mailbox-state").inner_text()
            n = int(row.get_by_test_id("mailbox-messages").inner_text())
            if state in ("running", "queued"):
                seen.add(n)
            return state == "done" and n
        final = wait_for(progress, "the mailbox to be shown done", timeout=180, interval=0.1)
        check(len(seen - {0}) >= 2,
              f"the page showed the running mailbox's count change: {sorted(seen)}")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        check(final == st[big]["messages"] == 400, f"and done with {final} messages, as status says")
        page.get_by_test_id("runs").locator('[data-testid="run-row"]').first.filter(
            has_text="finished").wait_for(timeout=15000)
        check(True, "the run is listed finished")

        # a failing mailbox: its error shows as text, and the dead-letter page retries it
        page.get_by_test_id("run-broken").click()
        bad_row = page.locator(f'[data-mailbox="{bad}"]')
        bad_row.get_by_test_id("mailbox-state").filter(has_text="failed").wait_for(timeout=60000)
        check(page.locator("img").count() == 0, "nothing from the server is rendered as HTML")
        page.get_by_test_id("nav-dlq").click()
        rec = page.locator('[data-testid="dlq-row"]').filter(has_text=bad)
        rec.wait_for(timeout=30000)
        check("login refused" in rec.inner_text(), "the dead-letter page shows the failure")
        rec.get_by_role("button", name="Retry").click()
        rec.wait_for(state="detached", timeout=30000)
        check(True, "Retry removed it from the dead-letter list")

        page.get_by_test_id("nav-overview").click()
        page.get_by_test_id("archived-total").wait_for(timeout=15000)
        trow = page.locator(f'[data-tenant="{t}"]')
        check("400" in trow.inner_text(), f"the overview counts the tenant's archived messages: {trow.inner_text()!r}")
    check(not problems, f"no script errors, CSP violations or dialogs: {problems}")
    browser.close()
print("1 passed, 0 failed")
