#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    lxd_mutater::cmd::main()
}
