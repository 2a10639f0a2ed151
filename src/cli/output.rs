//! What the subcommands print. A reader that goes away (`smtprelay queue list | head`) ends the
//! command the way it ends other Unix tools: quietly, by SIGPIPE, instead of the panic that
//! `println!` gives when a write fails.

use std::fmt;
use std::io::{self, Write};

/// `println!` for the subcommands' standard output.
macro_rules! outln {
    () => {
        $crate::cli::output::line(&mut ::std::io::stdout().lock(), format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(&mut ::std::io::stdout().lock(), format_args!($($arg)*))
    };
}

/// `eprintln!` for the subcommands' messages.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(&mut ::std::io::stderr().lock(), format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

/// Writes one line; a closed pipe ends the process by SIGPIPE, any other failure with status 1.
pub fn line(out: &mut impl Write, text: fmt::Arguments<'_>) {
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        fail(e);
    }
}

fn fail(error: io::Error) -> ! {
    if error.kind() == io::ErrorKind::BrokenPipe {
        // The Rust runtime ignores SIGPIPE; restore the default and let it end the process
        // with the status shells expect from a pipeline's early reader (128 + 13).
        // SAFETY: signal(2) and raise(3) with constants, in a single-threaded tail of the process.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
    // Nowhere left to say it if stderr failed too; the status still tells.
    let _ = writeln!(io::stderr(), "error: cannot write the output: {error}");
    std::process::exit(1);
}
