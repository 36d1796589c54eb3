//! `loadgen`: see the library's documentation; this only runs the command line.

fn main() {
    std::process::exit(loadgen::main_with_args());
}
