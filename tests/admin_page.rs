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
    setup_with(&[]).await
}

/// [`setup`] with more variables.
async fn setup_with(extra: &[(&str, &str)]) -> (FakeGemini, Proxy) {
    let fake = FakeGemini::start([KEY_1, KEY_2, NEW_KEY]).await.unwrap();
    let keys = format!("{KEY_1},{KEY_2}");
    let url = fake.url();
    let mut vars = vec![
        ("GEMINI_API_KEYS", keys.as_str()),
        ("UPSTREAM_URL", url.as_str()),
    ];
    vars.extend_from_slice(extra);
    let proxy = Proxy::start(&vars).await;
    (fake, proxy)
}

/// A fresh SQLite file for the request log.
fn temp_db() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "tower-gemini-admin-page-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.db")
}

fn generate(model: &str, token: &str) -> http::Request<Body> {
    http::Request::post(format!("/v1beta/models/{model}:generateContent"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}).to_string(),
        ))
        .unwrap()
}

/// Traffic for the page to show: two answers on flash, one on pro, and an upstream 400 on
/// flash (its message names a key, which must never show). Returns the tokens answered.
async fn traffic(fake: &FakeGemini, proxy: &Proxy) -> u64 {
    let mut tokens = 0;
    for model in ["gemini-2.5-flash", "gemini-2.5-flash", "gemini-2.5-pro"] {
        let res = send(proxy, generate(model, &proxy.token)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
        tokens += v["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
    }
    fake.push_fault(tower_gemini::testing::Fault::HttpError {
        status: 400,
        message: format!("Invalid argument near {KEY_1}"),
    });
    let res = send(proxy, generate("gemini-2.5-flash", &proxy.token)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    tokens
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
    for path in [
        "/admin/keys",
        "/admin/tokens",
        "/admin/timeseries",
        "/admin/requests",
    ] {
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
    c.find(Locator::Id("hide-token"))
        .await
        .map_err(step("done button"))?
        .click()
        .await
        .map_err(step("hide the new token"))?;
    Ok(())
}

/// Every secret the run used; none may show in the page (its DOM, attributes included).
fn secrets(proxy: &Proxy) -> Vec<String> {
    vec![
        KEY_1.to_owned(),
        KEY_2.to_owned(),
        NEW_KEY.to_owned(),
        proxy.token.clone(),
        proxy.admin_token.clone(),
    ]
}

/// The page's DOM as it is now (not the HTML served): markup, attributes and text.
async fn dom(c: &Client) -> Result<String, String> {
    let v = c
        .execute("return document.documentElement.outerHTML", vec![])
        .await
        .map_err(|e| format!("read the DOM: {e}"))?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

/// Takes the screenshot and checks that no secret is anywhere in the page.
async fn finish(c: &Client, proxy: &Proxy) -> Result<(), String> {
    // The screenshot shows the traffic charts and the panels below them.
    c.execute(
        "document.getElementById('traffic-title').scrollIntoView()",
        vec![],
    )
    .await
    .map_err(|e| format!("scroll: {e}"))?;
    let png = c
        .screenshot()
        .await
        .map_err(|e| format!("screenshot: {e}"))?;
    let path = screenshot_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("admin page screenshot: {}", path.display());

    let dom = dom(c).await?;
    let source = c.source().await.map_err(|e| format!("page source: {e}"))?;
    for secret in secrets(proxy) {
        if dom.contains(&secret) || source.contains(&secret) {
            return Err(format!("a secret is in the page: {}", mask(&secret)));
        }
    }
    Ok(())
}

/// Rows of a table body as text (its placeholder row, without `data-row`, not counted); read
/// in one script, so a refresh of the table in between cannot leave a stale element.
async fn table_rows(c: &Client, css: &str) -> Result<Vec<String>, String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr[data-row]')]\
                 .map((r) => r.innerText)",
            vec![json!(css)],
        )
        .await
        .map_err(|e| format!("rows of {css}: {e}"))?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// Waits (up to 20 s) until the table has `n` rows that all satisfy `ok`.
async fn wait_rows(
    c: &Client,
    css: &str,
    n: usize,
    ok: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        last = table_rows(c, css).await?;
        if last.len() == n && last.iter().all(|r| ok(r)) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Err(format!("`{css}` never had {n} such rows; last: {last:?}"))
}

/// Heights of the bars matching `css` in a chart, read in one script.
async fn bar_heights(c: &Client, css: &str) -> Result<Vec<f64>, String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll(arguments[0])]\
                 .map((b) => Number(b.getAttribute('height')) || 0)",
            vec![json!(css)],
        )
        .await
        .map_err(|e| format!("bars {css}: {e}"))?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

async fn click(c: &Client, css: &str) -> Result<(), String> {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?
        .click()
        .await
        .map_err(|e| format!("click {css}: {e}"))
}

async fn type_into(c: &Client, css: &str, text: &str) -> Result<(), String> {
    let field = c
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?;
    field
        .clear()
        .await
        .map_err(|e| format!("clear {css}: {e}"))?;
    if !text.is_empty() {
        field
            .send_keys(text)
            .await
            .map_err(|e| format!("type into {css}: {e}"))?;
    }
    Ok(())
}

async fn select(c: &Client, css: &str, value: &str) -> Result<(), String> {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?
        .select_by_value(value)
        .await
        .map_err(|e| format!("select {value} in {css}: {e}"))
}

/// The traffic charts and the request log, after [`traffic`]: 4 requests, 1 error, `tokens`.
async fn views(c: &Client, proxy: &Proxy, tokens: u64) -> Result<(), String> {
    let fmt = |n: u64| {
        // The page writes numbers with the browser's locale (en-US here): 1,234.
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    let plural = |n: u64, word: &str| format!("{} {word}{}", fmt(n), if n == 1 { "" } else { "s" });
    let listed = text(send(proxy, get("/admin/tokens", Some(&proxy.admin_token))).await).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).map_err(|e| e.to_string())?;
    let client_id = listed["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "client-1"))
        .and_then(|t| t["id"].as_str())
        .ok_or("the configured client token is not listed")?
        .to_owned();
    // Charts, in total: what the gateway counted (the browser's own `/favicon.ico`, a 401,
    // is traffic too).
    let series = text(
        send(
            proxy,
            get("/admin/timeseries?range=hour", Some(&proxy.admin_token)),
        )
        .await,
    )
    .await;
    let series: serde_json::Value = serde_json::from_str(&series).map_err(|e| e.to_string())?;
    let sum = &series["total"]["sum"];
    let (requests, errors) = (
        sum["requests"].as_u64().unwrap_or(0),
        sum["errors"].as_u64().unwrap_or(0),
    );
    if requests < 4 || sum["tokens"] != tokens {
        return Err(format!("the gateway counted {sum}"));
    }
    let total = format!(
        "{} · {} (0 upstream) · {}, all requests, last hour",
        plural(requests, "request"),
        plural(errors, "error"),
        plural(tokens, "token")
    );
    wait_text(c, "#ts-summary", |t| t.starts_with(&total)).await?;
    let ok = bar_heights(c, "#ts-requests rect.ok").await?;
    let err = bar_heights(c, "#ts-requests rect.err").await?;
    let tok = bar_heights(c, "#ts-tokens rect.tok").await?;
    if ok.len() != 60 || tok.len() != 60 {
        return Err(format!(
            "{} request columns, {} token columns",
            ok.len(),
            tok.len()
        ));
    }
    if !ok.iter().any(|h| *h > 0.0)
        || !err.iter().any(|h| *h > 0.0)
        || !tok.iter().any(|h| *h > 0.0)
    {
        return Err(format!(
            "empty charts: ok {ok:?} err {err:?} tokens {tok:?}"
        ));
    }
    // One account, exactly the traffic sent: 4 requests, 1 error; then per day.
    select(c, "#ts-series", &format!("account:{client_id}")).await?;
    let mine = format!(
        "4 requests · 1 error (0 upstream) · {}, account client-1, last hour",
        plural(tokens, "token")
    );
    wait_text(c, "#ts-summary", |t| t.starts_with(&mine)).await?;
    select(c, "#ts-range", "day").await?;
    let mine_day = mine.replace("last hour", "last day");
    wait_text(c, "#ts-summary", |t| t.starts_with(&mine_day)).await?;
    if bar_heights(c, "#ts-tokens rect.tok").await?.len() != 24 {
        return Err("the day is not 24 columns".into());
    }
    select(c, "#ts-series", "total").await?;
    select(c, "#ts-range", "hour").await?;

    // The request log: a row per request counted, newest first; the upstream error keeps
    // its message (the key in it masked) and its account.
    let (requests, errors) = (requests as usize, errors as usize);
    wait_rows(c, "#requests-table", requests, |_| true).await?;
    let error_rows = wait_rows(c, "#errors-table", errors, |_| true).await?;
    let upstream = error_rows
        .iter()
        .find(|r| r.contains("400"))
        .ok_or("no 400 in the errors table")?;
    if !upstream.contains("Invalid argument near AIza") || !upstream.contains("client-1") {
        return Err(format!(
            "the error row lacks its message or account: {upstream:?}"
        ));
    }
    // Filters narrow both tables: status 400, then a model.
    type_into(c, "#f-status", "400").await?;
    click(c, "#f-apply").await?;
    wait_rows(c, "#requests-table", 1, |r| r.contains("400")).await?;
    type_into(c, "#f-status", "").await?;
    type_into(c, "#f-model", "gemini-2.5-pro").await?;
    click(c, "#f-apply").await?;
    wait_rows(c, "#requests-table", 1, |r| {
        r.contains("gemini-2.5-pro") && r.contains("200")
    })
    .await?;
    wait_text(c, "#errors-table tbody", |t| t.contains("No errors match")).await?;
    // A bad status is refused by the page before any request.
    type_into(c, "#f-model", "").await?;
    type_into(c, "#f-status", "4x").await?;
    click(c, "#f-apply").await?;
    wait_text(c, "#log-msg", |t| t.contains("429")).await?;
    click(c, "#f-clear").await?;
    wait_rows(c, "#requests-table", requests, |_| true).await?;
    // Paging: the account filter keeps all four; nothing older than one page of 25.
    let older = c
        .find(Locator::Id("requests-older"))
        .await
        .map_err(|e| e.to_string())?;
    if older.is_enabled().await.map_err(|e| e.to_string())? {
        return Err("`Older` is enabled on a single page".into());
    }
    select(c, "#f-account", &client_id).await?;
    click(c, "#f-apply").await?;
    wait_rows(c, "#requests-table", 4, |r| r.contains("client-1")).await?;
    click(c, "#f-clear").await?;
    Ok(())
}

/// The tokens section on the accounts API: create a token with a budget and labels, see its
/// usage and budget, edit a limit. Skipped (saying why) while the gateway lists tokens
/// without `usage` (the accounts API not merged yet).
async fn accounts(c: &Client, proxy: &Proxy) -> Result<(), String> {
    let listed = text(send(proxy, get("/admin/tokens", Some(&proxy.admin_token))).await).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).map_err(|e| e.to_string())?;
    let has_accounts = listed["tokens"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t.get("usage").is_some()));
    if !has_accounts {
        eprintln!(
            "skipping the accounts part of the admin page test: GET /admin/tokens lists no \
             `usage` (the accounts API is not on this branch yet)"
        );
        // The simpler shape renders: no limit fields, no account columns.
        let limits = c
            .find(Locator::Id("token-limits"))
            .await
            .map_err(|e| e.to_string())?;
        if limits.is_displayed().await.map_err(|e| e.to_string())? {
            return Err("account limits shown without the accounts API".into());
        }
        return Ok(());
    }
    type_into(c, "#new-token-name", "budgeted").await?;
    type_into(c, "#tok-rpm", "60").await?;
    type_into(c, "#tok-daily", "1000").await?;
    type_into(c, "#tok-expires", "2099-01-01").await?;
    type_into(c, "#tok-labels", "team=x").await?;
    click(c, "#add-token-form button[type=submit]").await?;
    wait_text(c, "#new-token-value", |t| t.starts_with("sk-")).await?;
    let row = wait_text(c, "#tokens-table tbody", |t| {
        t.contains("budgeted") && t.contains("team=x") && t.contains("of 1,000 tokens")
    })
    .await?;
    if !row.contains("60 requests / minute") || !row.contains("2099-01-01") {
        return Err(format!("the new token's limits are not shown: {row}"));
    }
    click(c, "#hide-token").await?;
    // Edit: lower the rate limit, clear the labels.
    let listed = text(send(proxy, get("/admin/tokens", Some(&proxy.admin_token))).await).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).map_err(|e| e.to_string())?;
    let id = listed["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "budgeted"))
        .and_then(|t| t["id"].as_str())
        .ok_or("the new token is not listed")?
        .to_owned();
    click(
        c,
        &format!("tr[data-row=\"token:{id}\"] [data-action=edit]"),
    )
    .await?;
    type_into(c, "#tok-rpm", "30").await?;
    type_into(c, "#tok-labels", "").await?;
    click(c, "#add-token-form button[type=submit]").await?;
    wait_text(c, "#tokens-msg", |t| t.starts_with("Saved")).await?;
    wait_text(c, &format!("tr[data-row=\"token:{id}\"]"), |t| {
        t.contains("30 requests / minute") && !t.contains("team=x")
    })
    .await?;
    let listed = text(send(proxy, get("/admin/tokens", Some(&proxy.admin_token))).await).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).map_err(|e| e.to_string())?;
    let t = listed["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == id.as_str()))
        .ok_or("the edited token is not listed")?;
    if t["rpm"] != 30 || t["daily_token_budget"] != 1000 {
        return Err(format!("the edit did not reach the gateway: {t}"));
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
    let db = temp_db();
    let (fake, proxy) = setup_with(&[("DATABASE_PATH", db.to_str().unwrap())]).await;
    let tokens = traffic(&fake, &proxy).await;
    let (_chromedriver, client) = browser(&driver, &chrome).await;
    let outcome = async {
        walk(&client, &proxy).await?;
        views(&client, &proxy, tokens).await?;
        accounts(&client, &proxy).await?;
        finish(&client, &proxy).await
    }
    .await;
    // Close the session (and the browser) whatever happened, then judge.
    let _ = client.close().await;
    outcome.unwrap();

    // The key added in the browser is in the pool the gateway serves from.
    let res = send(&proxy, get("/admin/keys", Some(&proxy.admin_token))).await;
    let body = text(res).await;
    assert!(body.contains(&mask(NEW_KEY)), "{body}");
    assert!(!body.contains(NEW_KEY), "{body}");
    drop(proxy);
    std::fs::remove_dir_all(db.parent().unwrap()).ok();
}
