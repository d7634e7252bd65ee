//! docs/configuration.md, docs/huddle.example.toml and the server's configuration name the same
//! keys, and the example passes `huddle config check` (with its commented keys too).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

fn huddle(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(args)
        .env_remove("HUDDLE_CONFIG")
        .output()
        .expect("huddle runs")
}

/// `section.key` (or `key` at the top level) for every key in `huddle config show`'s TOML for
/// `file`, and the keys it says it left out (secrets). `config show` prints every key that has
/// a value, so with the example's commented keys all set (see [`full_example`]) that is every
/// key the server knows; a new key whose default is "unset" shows only once the example sets it.
fn server_keys(file: &Path) -> BTreeSet<String> {
    let out = huddle(&["config", "show", "--config", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(hidden) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is set; hidden here."))
        {
            keys.insert(hidden.to_string());
        } else if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{s}.");
        } else if let Some((k, _)) = line.split_once(" = ") {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(format!("{section}{k}"));
            }
        }
    }
    keys
}

/// The example with every commented key set, in `dir`, with the files it names made there
/// (`config check` checks that they exist, as `serve` would; their contents are not parsed).
fn full_example(example: &str, dir: &Path) -> PathBuf {
    let mut all_set: String = example
        .lines()
        .map(|l| {
            match l
                .strip_prefix("# ")
                .and_then(|r| Some((r, r.split_once(" = ")?.0)))
            {
                Some((rest, k)) if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') => rest,
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    for path in ["/etc/huddle/", "/run/credentials/huddle.service/"] {
        all_set = all_set.replace(path, &format!("{}/", dir.display()));
    }
    for name in [
        "cert.pem",
        "key.pem",
        "turn-cert.pem",
        "turn-key.pem",
        "api.secret",
        "token-secret",
    ] {
        std::fs::write(dir.join(name), "0123456789abcdef0123456789abcdef\n").unwrap();
    }
    let full = dir.join("full.toml");
    std::fs::write(&full, all_set).unwrap();
    full
}

fn doc_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(docs().join("configuration.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(k, _)| k.to_string())
        .collect()
}

/// Keys of a TOML file whose `key = value` lines may be commented out with `# `.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{s}.");
            continue;
        }
        let l = line.strip_prefix("# ").unwrap_or(line);
        if let Some((k, _)) = l.split_once(" = ") {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(format!("{section}{k}"));
            }
        }
    }
    keys
}

#[test]
fn the_documentation_the_example_and_the_server_name_the_same_keys() {
    let example_path = docs().join("huddle.example.toml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    let dir = std::env::temp_dir().join(format!("huddle-cfgdoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let full = full_example(&example, &dir);
    let server = server_keys(&full);
    assert!(
        server.contains("server.drain_secs") && server.contains("turn.secret"),
        "{server:?}"
    );
    let documented = doc_keys();
    let in_example = example_keys(&example);
    let missing: Vec<_> = server.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&server).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md: undocumented keys {missing:?}, documented keys that do not exist {unknown:?}"
    );
    let missing: Vec<_> = server.difference(&in_example).collect();
    let unknown: Vec<_> = in_example.difference(&server).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/huddle.example.toml: missing keys {missing:?}, keys that do not exist {unknown:?}"
    );

    // The example as shipped, and with every commented key set, passes `config check`.
    let out = huddle(&["config", "check", example_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = huddle(&["config", "check", full.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the example with its commented keys set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_names_a_bad_key() {
    let dir = std::env::temp_dir().join(format!("huddle-cfgbad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[server]\ndrain_sec = 5\n").unwrap();
    let out = huddle(&["config", "check", f.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drain_sec"), "{err}");
}
