//! `smtprelay check-config`: every problem in the file, then the files it points to.

use super::output::{errln, outln};
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

pub fn run(path: &Path) -> Result<ExitCode, ExitCode> {
    let config = Config::load(path).map_err(|e| super::report_config_error(&e))?;
    if let Some(tls) = &config.tls
        && let Err(e) = crate::smtp::tls::acceptor(tls)
    {
        errln!("error: {}: [tls]: {e}", path.display());
        return Err(ExitCode::from(super::EXIT_CONFIG));
    }
    outln!(
        "{}: ok ({} listener(s), {} user(s), {} account(s), state in {})",
        path.display(),
        config.listen.len(),
        config.users.len(),
        config.accounts.len(),
        config.server.state_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
