//! `smtprelay hash-password`: an argon2id hash for `password_hash` in a [[user]] table.

use super::output::{errln, outln};
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

pub fn run() -> Result<ExitCode, ExitCode> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(fail)?;
        let again = rpassword::prompt_password("Again: ").map_err(fail)?;
        if first != again {
            errln!("error: the passwords differ");
            return Err(ExitCode::FAILURE);
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(fail)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        errln!("error: the password is empty");
        return Err(ExitCode::FAILURE);
    }
    outln!("{}", crate::smtp::policy::hash_password(&password));
    Ok(ExitCode::SUCCESS)
}

fn fail(e: std::io::Error) -> ExitCode {
    errln!("error: cannot read the password: {e}");
    ExitCode::FAILURE
}
