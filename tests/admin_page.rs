//! The `/admin` page as operators meet it: served without a credential, self-contained (nothing
//! from another host), its API behind the admin token; and driven in a real headless Chromium
//! through chromedriver (skipped, with the reason printed, where they are not installed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use http::{Response, StatusCode};
use serde_json::json;
use support::{Proxy, get, send};
use tower_gemini::Body;
use tower_gemini::body::collect_limited;
use tower_gemini::secret::mask;
use tower_gemini::testing::FakeGemini;

const KEY_1: &str = "AIzaSyAdmin-page-key-one-0000000000001";
const KEY_2: &str = "AIzaSyAdmin-page-key-two-0000000000002";
const NEW_KEY: &str = "AIzaSyAdmin-page-key-new-0000000000003";

async fn text(res: Response<Body>) -> String {
    let body = collect_limited(res.into_body(), 1 << 24).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A fake with two keys and a proxy on it.
async fn setup() -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY_1, KEY_2, NEW_KEY]).await.unwrap();
    let keys = format!("{KEY_1},{KEY_2}");
    let url = fake.url();
    let proxy = Proxy::start(&[
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
    ])
    .await;
    (fake, proxy)
}

fn header<'a>(res: &'a Response<Body>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

// === Without a browser ===

#[tokio::test]
async fn admin_page_is_served_without_a_credential() {
    let (_fake, proxy) = setup().await;
    let res = send(&proxy, get("/admin", None)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "content-type").starts_with("text/html"));
    assert_eq!(header(&res, "cache-control"), "no-store");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    let html = text(res).await;
    assert!(html.contains("<title>tower-gemini · admin</title>"));
    assert!(html.contains("id=\"signin-form\""));
    assert!(!html.contains(KEY_1) && !html.contains(&proxy.admin_token));
}

#[tokio::test]
async fn admin_page_loads_nothing_from_another_host() {
    let (_fake, proxy) = setup().await;
    let res = send(&proxy, get("/admin", None)).await;
    let csp = header(&res, "content-security-policy").to_owned();
    let html = text(res).await.to_ascii_lowercase();

    // No absolute or protocol-relative URL at all, and nothing loaded by reference.
    for needle in [
        "http://",
        "https://",
        "src=\"//",
        "href=\"//",
        "url(",
        "@import",
    ] {
        assert!(!html.contains(needle), "the page holds `{needle}`");
    }
    assert!(!html.contains("<script src"), "scripts must be inline");
    assert!(!html.contains("<link"), "styles and fonts must be inline");

    // The policy names no host: everything is 'none', 'self' or this response's nonce.
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("http") && !csp.contains('*'), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
}

#[tokio::test]
async fn admin_page_script_nonce_is_fresh_per_response_and_matches_the_policy() {
    let (_fake, proxy) = setup().await;
    let nonce = |csp: &str| {
        let start = csp.find("'nonce-").expect("a nonce in the CSP") + "'nonce-".len();
        csp[start..].split('\'').next().unwrap().to_owned()
    };
    let first = send(&proxy, get("/admin", None)).await;
    let n1 = nonce(header(&first, "content-security-policy"));
    let html = text(first).await;
    assert!(html.contains(&format!("<script nonce=\"{n1}\">")));
    assert!(html.contains(&format!("<style nonce=\"{n1}\">")));
    assert!(!html.contains("{{nonce}}"));
    let second = send(&proxy, get("/admin", None)).await;
    let n2 = nonce(header(&second, "content-security-policy"));
    assert!(n1.len() >= 32, "nonce too short: {n1}");
    assert_ne!(n1, n2);
}

#[tokio::test]
async fn admin_page_api_calls_need_the_admin_token() {
    let (_fake, proxy) = setup().await;
    let html = text(send(&proxy, get("/admin", None)).await).await;
    assert!(
        html.contains("Authorization: \"Bearer \""),
        "the page sends the token"
    );
    for path in ["/admin/keys", "/admin/tokens"] {
        assert_eq!(
            send(&proxy, get(path, None)).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without a token"
        );
        assert_eq!(
            send(&proxy, get(path, Some(&proxy.token))).await.status(),
            StatusCode::FORBIDDEN,
            "{path} with a client token"
        );
        assert_eq!(
            send(&proxy, get(path, Some(&proxy.admin_token)))
                .await
                .status(),
            StatusCode::OK,
            "{path} with the admin token"
        );
    }
}

#[tokio::test]
async fn unknown_admin_paths_are_answered_here_never_upstream() {
    // The page polls `/admin/stats`; where no such route exists it must cost no upstream call.
    let (fake, proxy) = setup().await;
    let res = send(
        &proxy,
        get("/admin/no-such-thing", Some(&proxy.admin_token)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = send(&proxy, get("/admin/no-such-thing", None)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send(&proxy, get("/admin/no-such-thing", Some(&proxy.token))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(fake.total_requests(), 0);
}

// === In a headless browser ===

/// `name` on `PATH`, if there.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// chromedriver and a Chromium to drive, or why the browser test cannot run here.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| which("chromedriver"))
        .ok_or("no chromedriver on PATH (Debian: apt-get install chromium-driver)")?;
    let browser = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .into_iter()
                .find_map(which)
        })
        .ok_or("no chromium on PATH (Debian: apt-get install chromium)")?;
    Ok((driver, browser))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `${CARGO_TARGET_DIR:-target}/admin-page.png`
fn screenshot_path() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    dir.join("admin-page.png")
}

/// Starts a WebDriver session on a fresh chromedriver with headless Chromium.
async fn browser(driver: &Path, chrome: &Path) -> (tokio::process::Child, Client) {
    let port = free_port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chrome,
            "args": [
                "--headless=new",
                // CI runs as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1280,1400",
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (child, client),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "chromedriver not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session from {}: {e}", driver.display()),
        }
    }
}

/// Waits (up to 20 s) until the text of `css` satisfies `ok`; returns that text.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(el) = c.find(Locator::Css(css)).await {
            last = el.text().await.unwrap_or_default();
            if ok(&last) {
                return Ok(last);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("`{css}` never got there; last text: {last:?}"))
}

/// The row id of the key added in the browser (the row whose text shows its mask).
async fn added_id(c: &Client) -> Result<String, String> {
    for row in c
        .find_all(Locator::Css("#keys-table tbody tr"))
        .await
        .map_err(|e| e.to_string())?
    {
        if row
            .text()
            .await
            .unwrap_or_default()
            .contains(&mask(NEW_KEY))
        {
            let id = row.attr("data-row").await.map_err(|e| e.to_string())?;
            return id
                .and_then(|r| r.strip_prefix("key:").map(str::to_owned))
                .ok_or_else(|| "a key row without an id".to_owned());
        }
    }
    Err("the added key has no row".into())
}

/// The operator's walk through the page; errors name the step.
async fn walk(c: &Client, proxy: &Proxy) -> Result<(), String> {
    let step = |what: &'static str| move |e: fantoccini::error::CmdError| format!("{what}: {e}");
    c.goto(&format!("{}/admin", proxy.url()))
        .await
        .map_err(step("open /admin"))?;

    // A wrong token is refused and the sign-in form stays.
    let field = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("signin-token"))
        .await
        .map_err(step("sign-in field"))?;
    field
        .send_keys(&proxy.token)
        .await
        .map_err(step("type a client token"))?;
    c.find(Locator::Id("signin-submit"))
        .await
        .map_err(step("sign-in button"))?
        .click()
        .await
        .map_err(step("submit"))?;
    wait_text(c, "#signin-msg", |t| t.contains("not the admin token")).await?;

    // Sign in with the admin token: the key table lists both keys, masked.
    field.clear().await.map_err(step("clear"))?;
    field
        .send_keys(&proxy.admin_token)
        .await
        .map_err(step("type the admin token"))?;
    c.find(Locator::Id("signin-submit"))
        .await
        .map_err(step("sign-in button"))?
        .click()
        .await
        .map_err(step("submit"))?;
    let table = wait_text(c, "#keys-table tbody", |t| {
        t.contains(&mask(KEY_1)) && t.contains(&mask(KEY_2))
    })
    .await?;
    if table.contains(KEY_1) {
        return Err("a full key is shown".into());
    }
    wait_text(c, "#keys-summary", |t| t.contains("2 of 2 keys usable")).await?;
    // Usage: a chart when the gateway reports stats, else a short note.
    wait_text(c, "#usage-title", |t| t == "Usage").await?;
    let usage = c
        .find(Locator::Css("#usage-note"))
        .await
        .map_err(step("usage note"))?
        .text()
        .await
        .map_err(step("usage note text"))?;
    let chart_shown = c
        .find(Locator::Id("usage-body"))
        .await
        .map_err(step("usage body"))?
        .is_displayed()
        .await
        .map_err(step("usage body shown"))?;
    if !chart_shown && !usage.contains("No stats yet") {
        return Err(format!("neither usage nor a note: {usage:?}"));
    }

    // Add a key through the form: it is listed, masked.
    c.find(Locator::Id("new-key"))
        .await
        .map_err(step("new key field"))?
        .send_keys(NEW_KEY)
        .await
        .map_err(step("type the new key"))?;
    c.find(Locator::Css("#add-key-form button[type=submit]"))
        .await
        .map_err(step("add key button"))?
        .click()
        .await
        .map_err(step("add key"))?;
    wait_text(c, "#keys-table tbody", |t| t.contains(&mask(NEW_KEY))).await?;
    wait_text(c, "#keys-msg", |t| t.starts_with("Added")).await?;
    let rows = c
        .find_all(Locator::Css("#keys-table tbody tr"))
        .await
        .map_err(step("key rows"))?;
    if rows.len() != 3 {
        return Err(format!("expected 3 key rows, got {}", rows.len()));
    }

    // Remove it again through the confirm dialog, then add it back for the screenshot.
    let row = format!("tr[data-row=\"key:{}\"]", added_id(c).await?);
    c.find(Locator::Css(&format!("{row} [data-action=remove]")))
        .await
        .map_err(step("remove button"))?
        .click()
        .await
        .map_err(step("remove"))?;
    c.accept_alert().await.map_err(step("confirm removal"))?;
    wait_text(c, "#keys-table tbody", |t| !t.contains(&mask(NEW_KEY))).await?;
    c.find(Locator::Id("new-key"))
        .await
        .map_err(step("new key field"))?
        .send_keys(NEW_KEY)
        .await
        .map_err(step("type the new key again"))?;
    c.find(Locator::Css("#add-key-form button[type=submit]"))
        .await
        .map_err(step("add key button"))?
        .click()
        .await
        .map_err(step("add key again"))?;
    wait_text(c, "#keys-table tbody", |t| t.contains(&mask(NEW_KEY))).await?;

    // Create a client token: shown once, in full.
    c.find(Locator::Id("new-token-name"))
        .await
        .map_err(step("token name field"))?
        .send_keys("browser-test")
        .await
        .map_err(step("type a token name"))?;
    c.find(Locator::Css("#add-token-form button[type=submit]"))
        .await
        .map_err(step("create token button"))?
        .click()
        .await
        .map_err(step("create token"))?;
    wait_text(c, "#new-token-value", |t| {
        t.starts_with("sk-") && t.len() > 40
    })
    .await?;
    wait_text(c, "#tokens-table tbody", |t| t.contains("browser-test")).await?;

    let png = c.screenshot().await.map_err(step("screenshot"))?;
    let path = screenshot_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("admin page screenshot: {}", path.display());

    // The page's source never holds a full key or the admin token.
    let source = c.source().await.map_err(step("page source"))?;
    if source.contains(NEW_KEY) || source.contains(&proxy.admin_token) {
        return Err("a secret is in the page".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_headless_chromium_signs_in_lists_keys_and_adds_one() {
    let (driver, chrome) = match browser_tools() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("skipping admin_page browser test: {why}");
            return;
        }
    };
    let (_fake, proxy) = setup().await;
    let (_chromedriver, client) = browser(&driver, &chrome).await;
    let outcome = walk(&client, &proxy).await;
    // Close the session (and the browser) whatever happened, then judge.
    let _ = client.close().await;
    outcome.unwrap();

    // The key added in the browser is in the pool the gateway serves from.
    let res = send(&proxy, get("/admin/keys", Some(&proxy.admin_token))).await;
    let body = text(res).await;
    assert!(body.contains(&mask(NEW_KEY)), "{body}");
    assert!(!body.contains(NEW_KEY), "{body}");
}
