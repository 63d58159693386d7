//! Style checks that run as tests (in the spirit of rust-analyzer's `tidy.rs`):
//!
//! - the sans-IO layers (`engine/src/core/`, `codec/src/`) never mention the runtime, sockets,
//!   the clock or the operating system's randomness in code: IO, time and seeds are passed in
//!   by the io layer; the core's hash tables are `core::hash::{Map, Set}`, never std's
//!   randomly keyed ones;
//! - no Rust file in the workspace is longer than 800 lines (a few files are on a
//!   warn-list, each with a reason, until they are split).

use std::fs;
use std::path::{Path, PathBuf};

/// Names the sans-IO layers must not use.
/// `RandomState` and `getrandom` are hidden randomness: the core's randomness is seeded from
/// its configuration (`core/hash.rs`, `core/auth/mod.rs`).
const FORBIDDEN_IN_SANS_IO: &[&str] = &[
    "glommio",
    "io_uring",
    "std::net",
    "Instant::now",
    "SystemTime::now",
    "tokio",
    "RandomState",
    "getrandom",
];

/// std's hash tables, which hash with `RandomState` unless told otherwise: the core uses
/// `core::hash::{Map, Set}` instead (keyed from the configuration).
const STD_HASH_TABLES: &[&str] = &["HashMap", "HashSet"];

/// Longest allowed `.rs` file, in lines.
const FILE_LINES_MAX: usize = 800;

/// Files allowed past [`FILE_LINES_MAX`] for now (path from the workspace root, reason).
/// Each is reported as a warning on every run; remove entries once split.
const LONG_FILE_WARN_LIST: &[(&str, &str)] = &[];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("engine/ has a parent").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name == "target" || name == "node_modules" || name.starts_with('.') {
                continue;
            }
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The code of a file: comments removed, and everything from the first `#[cfg(test)]` on
/// (tests may use the clock to build inputs).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).to_string_lossy().into_owned()
}

/// Files that are test-only modules: declared as `#[cfg(test)] [#[path = ".."]] mod name;`
/// by another file of `files`.
fn test_only_modules(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let dir = file.parent().expect("a file has a directory");
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if *line != "#[cfg(test)]" {
                continue;
            }
            let mut path_attr = None;
            for next in lines.iter().skip(i + 1).take(2) {
                if let Some(p) =
                    next.strip_prefix("#[path = \"").and_then(|r| r.strip_suffix("\"]"))
                {
                    path_attr = Some(p.to_owned());
                    continue;
                }
                let decl = next.trim_start_matches("pub(crate) ").trim_start_matches("pub ");
                if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                    let owner_dir = if stem == "mod" || stem == "lib" || path_attr.is_some() {
                        dir.to_path_buf()
                    } else {
                        dir.join(stem)
                    };
                    match &path_attr {
                        Some(p) => out.push(owner_dir.join(p)),
                        None => {
                            out.push(owner_dir.join(format!("{name}.rs")));
                            out.push(owner_dir.join(name).join("mod.rs"));
                        }
                    }
                }
                break;
            }
        }
    }
    out
}

#[test]
fn sans_io_layers_do_not_touch_io_or_clocks() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("engine/src/core"), &mut files);
    rust_files(&root.join("codec/src"), &mut files);
    assert!(!files.is_empty(), "found no sources under {}", root.display());
    let test_only = test_only_modules(&files);
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| !test_only.contains(f)) {
        let text = fs::read_to_string(file).expect("readable source");
        let code = code_of(&text);
        let in_core = rel(file).starts_with("engine/src/core/");
        let hash_rs = rel(file) == "engine/src/core/hash.rs";
        for (n, line) in code.lines().enumerate() {
            for word in FORBIDDEN_IN_SANS_IO {
                if line.contains(word) {
                    problems.push(format!("{}:{}: uses `{word}`", rel(file), n + 1));
                }
            }
            for word in STD_HASH_TABLES.iter().filter(|_| in_core && !hash_rs) {
                if line.contains(word) {
                    problems.push(format!(
                        "{}:{}: uses `{word}` (use hash::Map/Set)",
                        rel(file),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the sans-IO layers must take IO and time from the io layer:\n{}",
        problems.join("\n")
    );
}

/// The only files outside `engine/src/io/` that may use glommio: the log's file io (DMA
/// files). Everything else of the engine reaches the runtime through the io layer.
const GLOMMIO_OUTSIDE_IO_ALLOWED: &[&str] =
    &["engine/src/log/file.rs", "engine/src/log/segment_file.rs", "engine/src/log/compact.rs"];

#[test]
fn glommio_is_used_only_by_the_io_layer_and_the_log_files() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("engine/src"), &mut files);
    assert!(!files.is_empty(), "found no sources under {}", root.display());
    let io_dir = root.join("engine/src/io");
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&io_dir)) {
        if GLOMMIO_OUTSIDE_IO_ALLOWED.contains(&rel(file).as_str()) {
            continue;
        }
        let code = code_of(&fs::read_to_string(file).expect("readable source"));
        for (n, line) in code.lines().enumerate() {
            // String literals may name it (a log filter such as "glommio::reactor=off").
            let outside_strings: String = line.split('"').step_by(2).collect();
            if outside_strings.contains("glommio") {
                problems.push(format!("{}:{}: uses glommio", rel(file), n + 1));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "glommio belongs in engine/src/io/ (and the log's file io):\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_rust_file_is_too_long() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let lines = fs::read_to_string(file).map(|t| t.lines().count()).unwrap_or(0);
        if lines <= FILE_LINES_MAX {
            continue;
        }
        let path = rel(file);
        match LONG_FILE_WARN_LIST.iter().find(|(p, _)| *p == path) {
            Some((_, why)) => {
                eprintln!("warning: {path} has {lines} lines (> {FILE_LINES_MAX}), allowed: {why}")
            }
            None => problems.push(format!("{path}: {lines} lines (max {FILE_LINES_MAX})")),
        }
    }
    assert!(problems.is_empty(), "split these files:\n{}", problems.join("\n"));
}

#[test]
fn code_of_strips_comments_and_tests() {
    let text = "use a; // glommio\n//! glommio\nfn f() {}\n#[cfg(test)]\nmod tests { glommio }\n";
    let code = code_of(text);
    assert!(!code.contains("glommio"), "{code}");
    assert!(code.contains("fn f()"));
}
