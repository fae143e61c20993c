fn main() {
    eprintln!("titan-server: not built yet");
    std::process::exit(1);
}
