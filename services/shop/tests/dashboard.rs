//! The live dashboard in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `scripts/test`
//! installs): the embedded shop's gateway served on a port while a workload
//! places orders, and two messages payment cannot handle published onto
//! its bus.
//!
//! The page must show the live figures — orders decided rising from one
//! snapshot to the next, every consumer, sagas in flight, the outboxes, the
//! recent orders with their timelines, both dead letters — and its buttons
//! must work: a replay (once the fix is in) and a discard, each gone from
//! the service and then from the page. A screenshot taken mid-run is kept
//! under the target directory; the test prints where.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use gateway::Upstream;
use polis_core::Message;
use serde_json::{Value, json};
use shop::client::Endpoint;
use shop::workload::{self, Apis, Pacing};
use shop::{Embedded, Service, ShopConfig};
use uuid::Uuid;

const ORDERS: usize = 4_000;
const PATIENCE: Duration = Duration::from_secs(60);
/// How long one WebDriver command may take (starting the browser is the slowest).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium behind a chromedriver of this test's own, on a free port.
struct Browser {
    driver: Upstream,
    session: String,
    /// chromedriver, leader of its own process group (the browser's too).
    child: Child,
}

/// Where a program is on `PATH`, or a panic saying how to get it.
fn program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: `apt-get install chromium chromium-driver` (scripts/test does)")
        })
}

impl Browser {
    async fn start() -> Self {
        use std::os::unix::process::CommandExt as _;
        let chromium = program("chromium");
        let port = polis_testkit::free_port();
        let child = Command::new(program("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let driver = Upstream::remote(&format!("http://127.0.0.1:{port}")).unwrap();
        let up = polis_testkit::wait_for(PATIENCE, || async {
            driver.call(Method::GET, "/status", None, None, COMMAND_TIMEOUT).await.is_ok_and(|a| a.status.is_success())
        })
        .await;
        assert!(up.is_ok(), "chromedriver did not start on port {port}");
        let mut browser = Self { driver, session: String::new(), child };
        let arguments =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2000"];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": arguments},
        }}});
        let session = browser.command(Method::POST, "/session", Some(capabilities)).await;
        browser.session = session["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// Runs a WebDriver command; its `value`.
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|body| Bytes::from(body.to_string()));
        let answer = self.driver.call(method.clone(), path, body, None, COMMAND_TIMEOUT).await.unwrap();
        let mut value: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(answer.status, StatusCode::OK, "WebDriver {method} {path}: {value}");
        value["value"].take()
    }

    async fn session_command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body).await
    }

    async fn go(&self, url: &str) {
        self.session_command(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body: `return ...`) in the page.
    async fn eval(&self, script: &str) -> Value {
        self.session_command(Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// The text of the element `selector` selects, or `null` if none does.
    async fn text(&self, selector: &str) -> Value {
        let script = format!("const e = document.querySelector({}); return e ? e.textContent : null;", json!(selector));
        self.eval(&script).await
    }

    /// Clicks the element `selector` selects. The dashboard redraws its
    /// tables at every snapshot, so an element found can be replaced before
    /// the click reaches it ("stale element reference"): then it is found
    /// anew, a few times at most.
    async fn click(&self, selector: &str) {
        for _ in 0..5 {
            let found = self
                .session_command(Method::POST, "/element", Some(json!({ "using": "css selector", "value": selector })))
                .await;
            let element = found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned();
            let path = format!("/session/{}/element/{element}/click", self.session);
            let body = Some(Bytes::from(json!({}).to_string()));
            let answer = self.driver.call(Method::POST, &path, body, None, COMMAND_TIMEOUT).await.unwrap();
            if answer.status == StatusCode::OK {
                return;
            }
            let value: Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(value["value"]["error"], "stale element reference", "WebDriver click on {selector}: {value}");
        }
        panic!("{selector} was redrawn before every click");
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.session_command(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn quit(mut self) {
        self.session_command(Method::DELETE, "", None).await;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test leaves no browser behind: the whole group goes.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// Waits until `script` returns `true` in the page; on a timeout, fails saying `what`.
async fn until(browser: &Browser, what: &str, script: &str) {
    let met = polis_testkit::wait_for(PATIENCE, || async { browser.eval(script).await == Value::Bool(true) }).await;
    assert!(met.is_ok(), "the dashboard never showed {what}");
}

/// The number in the tile `id` (`1,234` → 1234).
async fn tile(browser: &Browser, id: &str) -> u64 {
    let text = browser.text(&format!("#{id}")).await;
    text.as_str().unwrap().replace(',', "").parse().unwrap_or(0)
}

/// The dead letter of `message`, once the gateway lists it.
async fn letter_of(gateway: &Endpoint, message: &Message) -> String {
    let found = std::sync::Mutex::new(None);
    let listed = polis_testkit::wait_for(PATIENCE, || async {
        let letters: Vec<Value> = gateway.get("/api/admin/dead-letters").await.unwrap();
        let letter = letters.into_iter().find(|l| l["message_id"] == message.id.to_string());
        let some = letter.is_some();
        *found.lock().unwrap() = letter;
        some
    })
    .await;
    assert!(listed.is_ok(), "message {} never became a dead letter", message.id);
    found.into_inner().unwrap().unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_shop_live_and_its_buttons_resolve_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ShopConfig::default();
    // A message payment cannot handle yet is a dead letter within moments.
    config.host.consumer.max_attempts = 3;
    let shop = Embedded::start(dir.path(), &config).await.unwrap();
    let http = polis_runtime::HttpOptions::default();
    let app = polis_runtime::with_standard_stack(shop.gateway(), &http);
    let listener = polis_runtime::serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let server = polis_runtime::serve::spawn(listener, app, &http).unwrap();
    let gateway = Endpoint::remote(&server.url()).unwrap();
    let apis = Apis::new(|service| {
        Ok(match service {
            Service::Gateway => gateway.clone(),
            service => Endpoint::local(shop.router(service)),
        })
    })
    .unwrap();

    // A demo's workload, running while the page is looked at.
    let mut rng = workload::rng(11);
    let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
    let plan = workload::plan(&seeded, ORDERS, &mut rng);
    let load = tokio::spawn({
        let apis = apis.clone();
        async move { workload::place_orders(&apis, &plan, 4, Pacing::Decided, &|_| {}).await.unwrap() }
    });

    // Two dead letters: one that can never be handled, one that can once payment knows its customer.
    let hopeless = shop::faults::unknown_payment_command();
    let customer = Uuid::now_v7();
    let authorization = shop::faults::authorization_for_unknown_customer(Uuid::now_v7(), customer, 100);
    shop.bus().publish(&[hopeless.clone(), authorization.clone()]).await.unwrap();
    let (hopeless_letter, letter) = (letter_of(&gateway, &hopeless).await, letter_of(&gateway, &authorization).await);

    let browser = Browser::start().await;
    browser.go(&format!("{}/dashboard", server.url())).await;
    assert_eq!(browser.eval("return document.title").await, "polis · shop dashboard");

    // Live: connected, and the orders decided rise from one snapshot to the next.
    until(&browser, "that it is live", "return document.getElementById('state').textContent === 'live'").await;
    until(
        &browser,
        "a decided order",
        "return Number(document.getElementById('orders-approved').textContent.replace(/,/g, '')) > 0",
    )
    .await;
    let (approved, snapshots) =
        (tile(&browser, "orders-approved").await, browser.eval("return Number(document.body.dataset.snapshots)").await);
    let rising = format!(
        "return Number(document.getElementById('orders-approved').textContent.replace(/,/g, '')) > {approved} \
         && Number(document.body.dataset.snapshots) > {snapshots}"
    );
    until(&browser, "the orders decided rising", &rising).await;
    until(
        &browser,
        "a rate of orders decided",
        "return Number(document.getElementById('decided-per-second').textContent) > 0",
    )
    .await;

    // Every part: the consumers of the services with one, sagas in flight, outboxes, recent orders with timelines.
    for consumer in ["order", "inventory", "payment", "shipping", "order-history"] {
        let row = format!(
            "return [...document.querySelectorAll('#consumers tbody tr')].some(r => r.cells[0].textContent === '{consumer}' \
             && r.cells.length === 5 && Number(r.cells[4].textContent.replace(/,/g, '')) > 0)"
        );
        until(&browser, &format!("the {consumer} consumer"), &row).await;
    }
    until(&browser, "sagas in flight", "return [...document.querySelectorAll('#sagas tbody tr')].some(r => r.cells[1] && r.cells[1].textContent === 'create-order')").await;
    until(&browser, "the outboxes", "return document.querySelectorAll('#outboxes tbody tr').length >= 5").await;
    until(&browser, "the order-history projection", "return [...document.querySelectorAll('#projections tbody tr')].some(r => r.cells[1].textContent === 'order-history')").await;
    until(
        &browser,
        "recent orders with their timelines",
        "return [...document.querySelectorAll('#recent-orders tbody tr')].some(r => r.dataset.status === 'APPROVED' \
         && r.textContent.includes('order-created') && r.textContent.includes('order-approved'))",
    )
    .await;
    until(
        &browser,
        "the memory of the process",
        "return document.querySelectorAll('#processes tbody tr').length === 1",
    )
    .await;
    // The audit's last pass: the services agree (a pass runs at start, then every 30 s).
    until(
        &browser,
        "the audit's last pass",
        "return document.getElementById('audit-pass').textContent.startsWith('Last pass at') \
         && document.querySelector('#drifts tbody td.empty') !== null",
    )
    .await;

    // Both dead letters, each with its buttons.
    for id in [&letter, &hopeless_letter] {
        let shown = format!("return document.querySelector('tr[data-letter=\"{id}\"] button.replay') !== null");
        until(&browser, &format!("dead letter {id}"), &shown).await;
    }
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&screenshot).await;
    let size = std::fs::metadata(&screenshot).unwrap().len();
    assert!(size > 10_000, "a {size}-byte screenshot shows nothing");
    println!("the dashboard mid-run: {} ({size} bytes)", screenshot.display());

    // Not replayable yet: the page says why, and the letter stays.
    browser.click(&format!("tr[data-letter=\"{letter}\"] button.replay")).await;
    until(&browser, "why the replay failed", &format!(
        "return document.getElementById('notice').className === 'failed' && document.getElementById('notice').textContent.includes('{letter}')"
    ))
    .await;
    let (status, _) =
        gateway.call(Method::GET, &format!("/api/admin/dead-letters/{letter}"), None::<&()>).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // Fixed (payment learns the customer): replayed from the page.
    shop.bus().publish(&[shop::faults::customer_registered(customer)]).await.unwrap();
    let payment = Endpoint::local(shop.router(Service::Payment));
    let known = polis_testkit::wait_for(PATIENCE, || async {
        payment
            .call(Method::GET, &format!("/credit/{customer}"), None::<&()>)
            .await
            .is_ok_and(|(s, _)| s == StatusCode::OK)
    })
    .await;
    assert!(known.is_ok(), "payment never learnt customer {customer}");
    let replayed = polis_testkit::wait_for(PATIENCE, || async {
        // The row is back at the next snapshot until the replay succeeds; click the row on the page now.
        let selector = format!("tr[data-letter=\"{letter}\"] button.replay:not([disabled])");
        if browser.eval(&format!("return document.querySelector('{selector}') !== null")).await == Value::Bool(true) {
            browser.click(&selector).await;
        }
        let notice = browser.text("#notice").await;
        notice.as_str().is_some_and(|n| n.contains(&format!("Replayed dead letter {letter} of payment")))
    })
    .await;
    assert!(replayed.is_ok(), "the replay button never replayed {letter}: {}", browser.text("#notice").await);
    let (status, _) =
        gateway.call(Method::GET, &format!("/api/admin/dead-letters/{letter}"), None::<&()>).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "the replayed letter is gone from the service");

    // The hopeless one is discarded.
    browser.click(&format!("tr[data-letter=\"{hopeless_letter}\"] button.discard")).await;
    until(
        &browser,
        "the discard",
        &format!(
            "return document.getElementById('notice').textContent.includes('Discarded dead letter {hopeless_letter}')"
        ),
    )
    .await;
    let (status, _) =
        gateway.call(Method::GET, &format!("/api/admin/dead-letters/{hopeless_letter}"), None::<&()>).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    until(
        &browser,
        "no dead letters",
        "return document.querySelector('tr[data-letter]') === null \
        && document.getElementById('dead-letters-total').textContent === '0'",
    )
    .await;

    browser.quit().await;
    load.abort();
    server.shutdown().await.unwrap();
    shop.shutdown().await;
}
