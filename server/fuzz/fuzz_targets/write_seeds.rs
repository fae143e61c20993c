//! Writes every target's seed inputs (`titan_server::fuzzing::seeds`) into
//! `<corpus_root>/<target>/seed-<n>`, only for targets whose folder is empty
//! or missing, so a committed corpus is never overwritten.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write_seeds <corpus_root>");
        std::process::exit(2);
    };
    for (name, _) in titan_server::fuzzing::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        if std::fs::read_dir(&dir)?.next().is_some() {
            continue;
        }
        for (n, seed) in titan_server::fuzzing::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed)?;
        }
        println!("seeded {}", dir.display());
    }
    Ok(())
}
