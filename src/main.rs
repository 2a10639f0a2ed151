fn main() -> std::process::ExitCode {
    smtprelay::cli::run()
}
