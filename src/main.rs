fn main() -> std::process::ExitCode {
    juju_brd::cli::run()
}
