//! Tidy tests over the runtime's own source text (rust-analyzer's idea): rules of the code's
//! shape that the compiler does not check.

use std::path::{Path, PathBuf};

/// Every `.rs` file at `path`, or below it when it is a directory (none when it is absent).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    if !path.exists() {
        return Vec::new();
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The layers: `node` → {`conn`, `admin`} → `shared`, never back. A module below `node` that
/// named it (or `shared` naming a module above it) would bring back the import circle
/// conn → server → admin → server this layout replaced.
#[test]
fn the_layers_below_node_never_import_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 3] = [
        ("conn", &["crate::node"]),
        ("admin", &["crate::node", "crate::conn"]),
        ("shared", &["crate::node", "crate::conn", "crate::admin"]),
    ];
    let mut wrong = Vec::new();
    for (module, forbidden) in rules {
        let files = [sources(&src.join(module)), sources(&src.join(format!("{module}.rs")))].concat();
        assert!(!files.is_empty(), "no source files for `{module}`: update this test with the layout");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                for name in forbidden.iter().filter(|name| line.contains(*name)) {
                    wrong.push(format!("{}:{}: {module} names {name}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "a lower layer names a higher one:\n{}", wrong.join("\n"));
}

/// `session/` and `smtp/` do no I/O: no socket, file, clock or task, so unit tests drive them
/// line by line and the driver (`conn/`) owns every wait. Their test files may read files.
#[test]
fn the_sans_io_rooms_name_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden =
        ["tokio", "std::fs", "TcpStream", "TcpListener", "UdpSocket", "SystemTime", "Instant::now", "std::thread"];
    let mut wrong = Vec::new();
    for module in ["session", "smtp"] {
        let files = sources(&src.join(module));
        assert!(!files.is_empty(), "no source files for `{module}`: update this test with the layout");
        for file in files.iter().filter(|f| !f.ends_with("tests.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            // A test module at the end of a file may use what it likes.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (number, line) in code.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for name in forbidden.iter().filter(|name| line.contains(*name)) {
                    wrong.push(format!("{}:{}: {module} names {name}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "a sans-I/O room does I/O:\n{}", wrong.join("\n"));
}
