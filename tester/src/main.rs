use clap::Parser;

fn main() {
    std::process::exit(revcall_tester::cli::run(revcall_tester::cli::Cli::parse()));
}
