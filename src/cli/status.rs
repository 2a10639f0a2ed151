//! `smtprelay status`: the status page's summary in a terminal, read from the running relay's
//! admin endpoint (`/status.txt`), with the bearer token when one is configured.

use std::process::ExitCode;

use super::output::{errln, outln};
use crate::config::Config;

pub fn run(config: &Config, url: Option<String>) -> Result<ExitCode, ExitCode> {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let Some(mut listen) = config.admin.listen else {
                errln!(
                    "error: [admin] listen is not set, so the relay has no admin endpoint to ask; set it, or pass --url"
                );
                return Err(ExitCode::FAILURE);
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
    let token = crate::admin::bearer_token(config).map_err(|e| {
        errln!("error: cannot read [admin] bearer_token_file: {e}");
        ExitCode::FAILURE
    })?;
    let url = format!("{base}/status.txt");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            errln!("error: {e}");
            ExitCode::FAILURE
        })?;
    // The endpoint may be behind an HTTPS proxy given as --url.
    let tls = crate::tls::client_config(None).map_err(|e| {
        errln!("error: {e}");
        ExitCode::FAILURE
    })?;
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
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            outln!("{}", body.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Ok((status, body)) => {
            errln!("error: {url} answered {status}: {}", body.trim());
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            errln!("error: cannot reach the relay at {url} (is it running?): {e}");
            Err(ExitCode::FAILURE)
        }
    }
}
