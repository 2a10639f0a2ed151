//! `smtprelay health`: the running relay's `/health` verdict as an exit status, for a
//! container's HEALTHCHECK or a liveness probe (the image has no curl): 0 while mail flows
//! (healthy or degraded), 1 when it cannot or the relay does not answer. One line says why.

use std::process::ExitCode;

use super::admin_http::{self, Failure};
use super::output::{errln, outln};
use crate::admin::Status;
use crate::config::Config;

#[derive(serde::Deserialize)]
struct Health {
    status: Status,
    #[serde(default)]
    reasons: Vec<String>,
}

pub fn run(config: &Config, url: Option<String>) -> Result<ExitCode, ExitCode> {
    let unhealthy = ExitCode::from(1);
    let answer = match admin_http::get(config, url, "/health") {
        Ok(answer) => answer,
        Err(Failure::Setup(code)) => return Err(code),
        Err(Failure::Unreachable) => return Err(unhealthy),
    };
    // 503 carries the report too: mail cannot flow, and why.
    let Ok(health) = serde_json::from_str::<Health>(&answer.body) else {
        errln!(
            "error: {} answered {}: {}",
            answer.url,
            answer.status,
            answer.body.trim()
        );
        return Err(unhealthy);
    };
    let line = match health.reasons.is_empty() {
        true => health.status.name().to_owned(),
        false => format!("{}: {}", health.status.name(), health.reasons.join("; ")),
    };
    match health.status {
        Status::Healthy | Status::Degraded => {
            outln!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Status::Unhealthy => {
            errln!("{line}");
            Err(unhealthy)
        }
    }
}
