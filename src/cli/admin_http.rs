//! GET requests to the running relay's admin endpoint, for `status` and `health`: the base URL
//! from `[admin] listen` (a wildcard address asked on loopback) or `--url`, and the bearer
//! token when one is configured.

use std::process::ExitCode;

use super::output::errln;
use crate::config::Config;

/// What the endpoint answered.
pub struct Answer {
    pub url: String,
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

/// Why no answer came.
pub enum Failure {
    /// The command cannot even ask (no admin endpoint configured, unreadable token): a
    /// configuration problem, said already.
    Setup(ExitCode),
    /// The relay did not answer (not running, say): said already.
    Unreachable,
}

pub fn get(config: &Config, url: Option<String>, path: &str) -> Result<Answer, Failure> {
    let failed = |message: String| {
        errln!("error: {message}");
        Failure::Setup(ExitCode::FAILURE)
    };
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let Some(mut listen) = config.admin.listen else {
                return Err(failed(
                    "[admin] listen is not set, so the relay has no admin endpoint to ask; set it, or pass --url".into(),
                ));
            };
            // A wildcard address is reachable on loopback.
            if listen.ip().is_unspecified() {
                listen.set_ip(match listen {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{listen}")
        }
    };
    let token = crate::admin::bearer_token(config)
        .map_err(|e| failed(format!("cannot read [admin] bearer_token_file: {e}")))?;
    let url = format!("{base}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    // The endpoint may be behind an HTTPS proxy given as --url.
    let tls = crate::tls::client_config(None).map_err(|e| failed(e.to_string()))?;
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let mut request = client.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        Ok::<_, reqwest::Error>((status, headers, response.text().await?))
    });
    match answer {
        Ok((status, headers, body)) => Ok(Answer {
            url,
            status,
            headers,
            body,
        }),
        Err(e) => {
            errln!("error: cannot reach the relay at {url} (is it running?): {e}");
            Err(Failure::Unreachable)
        }
    }
}
