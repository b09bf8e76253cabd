//! Black-box: how every client command finds the user's key (flag, then environment, then the
//! config file; `ZOS_KEY` a key file, `ZOS_SEED` a hex seed), shell completions, the message
//! for a negative size, and plain (colourless) logs when stderr is not a terminal.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{Proc, TempDir};

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary with none of the client settings of the caller's shell.
fn bare(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
    c.env("ZOS_CONFIG", config).env("RUST_LOG", "warn");
    for k in ["ZOS_LEDGER", "ZOS_RELAY", "ZOS_KEY", "ZOS_SEED", "NO_COLOR"] {
        c.env_remove(k);
    }
    c
}

fn stdout(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A key file from a seed of `n` bytes, through `zos key new`, and its e2e key.
fn key_file(dir: &Path, n: u8) -> (PathBuf, String) {
    let path = dir.join(format!("key{n}.json"));
    let seed = format!("{n:02x}").repeat(32);
    // The documented key file format, written directly so the seed is known.
    std::fs::write(
        &path,
        format!(r#"{{"version":1,"key_type":"ed25519","seed":"{seed}"}}"#),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let e2e = stdout(
        bare(&dir.join("none.toml"))
            .args(["rmb", "e2e-key", "--seed", &seed])
            .output()
            .unwrap(),
    );
    (path, e2e)
}

#[test]
fn key_lookup_is_flag_then_env_then_config_and_zos_key_is_a_file() {
    let dir = TempDir::new();
    let (a, e2e_a) = key_file(&dir.0, 0xa1);
    let (b, e2e_b) = key_file(&dir.0, 0xb2);
    let (c, e2e_c) = key_file(&dir.0, 0xc3);
    assert!(e2e_a != e2e_b && e2e_b != e2e_c);
    let cfg = dir.0.join("config.toml");
    std::fs::write(&cfg, format!("key = {:?}\n", a.display().to_string())).unwrap();
    let e2e = |envs: &[(&str, &Path)], flags: &[&str]| {
        let mut cmd = bare(&cfg);
        cmd.args(["rmb", "e2e-key"]).args(flags);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        stdout(cmd.output().unwrap())
    };
    // The config file's key…
    assert_eq!(e2e(&[], &[]), e2e_a);
    // …ZOS_KEY (a key file) over it…
    assert_eq!(e2e(&[("ZOS_KEY", &b)], &[]), e2e_b);
    // …and --key over both.
    let c_str = c.display().to_string();
    assert_eq!(e2e(&[("ZOS_KEY", &b)], &["--key", &c_str]), e2e_c);
    // ZOS_SEED is a hex seed; it wins over key files from the environment and the config.
    let seed_c = "c3".repeat(32);
    assert_eq!(
        e2e(&[("ZOS_KEY", &b), ("ZOS_SEED", Path::new(&seed_c))], &[]),
        e2e_c
    );
    // A hex seed in ZOS_KEY is a file name, and the error says which file is missing.
    let out = bare(&cfg)
        .args(["rmb", "e2e-key"])
        .env("ZOS_KEY", "a1".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&"a1".repeat(32)) && err.contains("No such file"),
        "{err}"
    );
    // The deploy commands read the same settings: with nothing configured, they say so.
    let out = bare(&dir.0.join("none.toml"))
        .args(["deployments"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run `zos up`"), "{err}");
    // And `zos rmb call` takes the relay and ledger from the config file too: with a key but
    // no relay anywhere, it asks for the relay rather than a flag being required.
    let out = bare(&cfg)
        .args(["rmb", "call", "1", "zos.system.version"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ZOS_RELAY") && err.contains("run `zos up`"),
        "{err}"
    );
}

#[test]
fn completions_for_each_shell() {
    let none = Path::new("/nonexistent/zos/config.toml");
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef zos"),
        ("fish", "complete -c zos"),
    ] {
        let out = stdout(bare(none).args(["completions", shell]).output().unwrap());
        assert!(
            out.contains(marker) && out.contains("deploy") && out.contains("keep-on-error"),
            "{shell}: {}",
            &out[..out.len().min(300)]
        );
    }
    let bad = bare(none).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_negative_size_says_so() {
    let dir = TempDir::new();
    for size in ["-1GiB", "-5"] {
        let spec = dir.0.join("neg.yaml");
        std::fs::write(
            &spec,
            format!("name: n\nworkloads:\n  v:\n    volume: {{ size: {size} }}\n"),
        )
        .unwrap();
        let out = bare(&dir.0.join("none.toml"))
            .arg("deploy")
            .arg(&spec)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("size must not be negative") && !err.contains("unknown size unit"),
            "{size}: {err}"
        );
    }
}

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = TempDir::new();
    let child = bare(&dir.0.join("none.toml"))
        .args([
            "ledger",
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.0.join("ledger"))
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let mut err = proc.0.stderr.take().unwrap();
    // Read for a while (the server logs at start), then stop it and read the rest.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = err.read_to_end(&mut all);
        all
    });
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = proc.0.kill();
    let _ = proc.0.wait();
    let text = reader.join().unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("DEBUG") || text.contains("INFO"),
        "no log lines to check: {text}"
    );
    assert!(!text.contains('\x1b'), "ANSI codes in a log file: {text:?}");
}
