//! The `zos` binary as a client, and its servers as children: shared by the black-box tests
//! that drive a real `zos ledger serve --dev` (and `zos relay serve`) from the command line.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Proc;

/// The binary with no config file and none of the client settings of the caller's shell.
pub fn bare() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
    c.env("ZOS_CONFIG", "/nonexistent/zos/config.toml")
        .env("RUST_LOG", "warn");
    for k in [
        "ZOS_LEDGER",
        "ZOS_RELAY",
        "ZOS_KEY",
        "ZOS_SEED",
        "ZOS_HUB",
        "ZOS_TWIN",
    ] {
        c.env_remove(k);
    }
    c
}

/// `zos ARGS` with only `envs` as its settings.
pub fn zos(envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = bare();
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The stdout of a command that must have succeeded.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts a server and returns it with the word after `marker` in its stderr.
pub fn serve(args: &[&str], marker: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let found = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(i) = line.find(marker) {
            break line[i + marker.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
    };
    // Keep draining stderr so a chatty server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), found)
}

/// `zos ledger serve --dev` on `data` (`extra`: more of its arguments), and its URL.
pub fn ledger(data: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "ledger",
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serve(&args, "ledger listening on ")
}

/// A dev ledger and a relay for the domain `local` on it (the relay is stopped first).
pub struct LedgerRelay {
    pub relay: Proc,
    pub ws: String,
    pub ledger: Proc,
    pub url: String,
}

impl LedgerRelay {
    /// Creates the twin of `seed`, reachable through the relay (domain `local`) with its e2e
    /// key, and returns its client settings.
    pub fn user_twin<'a>(&'a self, seed: &'a str) -> [(&'static str, &'a str); 3] {
        let e2e = ok(zos(&[], &["rmb", "e2e-key", "--seed", seed]))
            .trim()
            .to_string();
        let env = [
            ("ZOS_LEDGER", self.url.as_str()),
            ("ZOS_SEED", seed),
            ("ZOS_RELAY", self.ws.as_str()),
        ];
        ok(zos(
            &env,
            &["twin", "create", "--relay", "local", "--e2e-key", &e2e],
        ));
        env
    }

    /// Creates the twin of `seed` and its farm `farm-one`.
    pub fn farmer(&self, seed: &str) {
        let env = [("ZOS_LEDGER", self.url.as_str()), ("ZOS_SEED", seed)];
        ok(zos(&env, &["twin", "create", "--relay", "local"]));
        ok(zos(&env, &["farm", "create", "farm-one"]));
    }
}

/// Starts a dev ledger on `data` and a relay (domain `local`) that uses it.
pub fn ledger_and_relay(data: &Path) -> LedgerRelay {
    let (ledger, url) = ledger(data, &[]);
    let (relay, ws) = serve(
        &[
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--domain",
            "local",
            "--ledger",
            &url,
        ],
        "listening on ",
    );
    LedgerRelay {
        relay,
        ws,
        ledger,
        url,
    }
}

/// Asks `p` to stop (SIGTERM); the caller waits for it.
pub fn term(p: &Proc) {
    let pid = p.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Polls `f` every 200 ms until it gives a value; fails the test after `within`.
pub fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
