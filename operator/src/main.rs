fn main() {
    eprintln!("titan-operator: not built yet");
    std::process::exit(1);
}
