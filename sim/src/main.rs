use clap::Parser;

fn main() {
    std::process::exit(revcall_sim::cli::run(revcall_sim::cli::Cli::parse()));
}
