//! `smtprelay status`: the status page's summary in a terminal, read from the running relay's
//! admin endpoint (`/status.txt`), with the bearer token when one is configured. It exits
//! with the verdict, as monitoring plugins do (Nagios's scheme): 0 healthy, 1 degraded,
//! 2 unhealthy or not answering.

use std::process::ExitCode;

use super::admin_http::{self, Failure};
use super::output::{errln, outln};
use crate::admin::Status;
use crate::config::Config;

pub const EXIT_DEGRADED: u8 = 1;
pub const EXIT_UNHEALTHY: u8 = 2;

pub fn run(config: &Config, url: Option<String>) -> Result<ExitCode, ExitCode> {
    let answer = match admin_http::get(config, url, "/status.txt") {
        Ok(answer) => answer,
        Err(Failure::Setup(code)) => return Err(code),
        Err(Failure::Unreachable) => return Err(ExitCode::from(EXIT_UNHEALTHY)),
    };
    if !answer.status.is_success() {
        errln!(
            "error: {} answered {}: {}",
            answer.url,
            answer.status,
            answer.body.trim()
        );
        return Err(ExitCode::from(EXIT_UNHEALTHY));
    }
    outln!("{}", answer.body.trim_end());
    let verdict = answer
        .headers
        .get(crate::admin::STATUS_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(Status::from_name);
    match verdict {
        Some(Status::Healthy) => Ok(ExitCode::SUCCESS),
        Some(Status::Degraded) => Err(ExitCode::from(EXIT_DEGRADED)),
        Some(Status::Unhealthy) => Err(ExitCode::from(EXIT_UNHEALTHY)),
        None => {
            errln!(
                "error: {} did not say the verdict (an older relay?)",
                answer.url
            );
            Err(ExitCode::from(EXIT_UNHEALTHY))
        }
    }
}
