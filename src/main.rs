//! The `p2pshare` binary: all work is in the library; this only hands over the exit code.

fn main() {
    std::process::exit(p2pshare::cli::main());
}
