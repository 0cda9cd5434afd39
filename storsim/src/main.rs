use clap::Parser;

fn main() {
    std::process::exit(storsim::cli::run(storsim::cli::Cli::parse()));
}
