//! Real headless Chromium driven over WebDriver (Debian's `chromium-driver`), spoken with
//! reqwest: a session per [`Browser`], each with a fresh profile, so cookies are its own.

use std::time::Instant;

use serde_json::{Value, json};

pub struct Browser {
    driver: std::process::Child,
    url: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        Browser::launch(false).await
    }

    /// One that takes any server certificate (the relay's test CA is not Chromium's).
    pub async fn accepting_any_certificate() -> Browser {
        Browser::launch(true).await
    }

    async fn launch(accept_insecure_certs: bool) -> Browser {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // chromedriver cannot be told port 0 and report the port it got: a port free a
        // moment ago, on loopback only.
        let port = super::free_port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed (chromium-driver; .ci/run installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + super::TIMEOUT;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let session: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": accept_insecure_certs,
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"));
        Browser {
            url: format!("{base}/session/{id}"),
            driver,
            http,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    /// The command's value, or the error WebDriver reports (a page that cannot load, say).
    async fn try_command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        match answer["value"].get("error") {
            Some(_) => Err(answer["value"].clone()),
            None => Ok(answer["value"].clone()),
        }
    }

    /// Opens `url` and waits for the page (redirects followed, as a browser does).
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// [`Browser::goto`] for a page that may not load: Chromium's error, if it did not.
    pub async fn try_goto(&self, url: &str) -> Result<(), Value> {
        self.try_command(reqwest::Method::POST, "/url", json!({"url": url}))
            .await
            .map(drop)
    }

    /// Where the browser is now (after every redirect).
    pub async fn current_url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The names of the cookies the current page's site has, HttpOnly ones included.
    pub async fn cookie_names(&self) -> Vec<String> {
        let cookies = self
            .command(reqwest::Method::GET, "/cookie", Value::Null)
            .await;
        cookies
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The current page's DOM.
    pub async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Clicks the element `css` selects, which must exist.
    pub async fn click(&self, css: &str) {
        let element = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    /// Waits until the page's DOM contains `text`; returns it.
    pub async fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + super::TIMEOUT;
        loop {
            let source = self.source().await;
            if source.contains(text) {
                return source;
            }
            assert!(Instant::now() < deadline, "never {text:?} in\n{source}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Ends the session (Chromium closes), then the driver.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}

impl Drop for Browser {
    /// Also when a test fails before [`Browser::quit`]: the driver is ours to end.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
