//! Scaffolding of the tests that boot the test guest on `zos up` (`vm_up_e2e`,
//! `public_ip_e2e`, `gateway_vm_up`): the checks before the grid starts, and the CLI's view of
//! the guests. It uses the including test's `up` and `vm_guest` modules: include it with
//! `#[path = "common/vm_up.rs"] mod vm_up;` next to them.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::up::{Up, free_port, grid_namespaces, has, is_root, local_grid_running, pids_with};

/// `zos up --nodes 2` offering the test guest (its hub on a free port), with the runtime the
/// test may use.
pub struct VmGrid {
    pub rt: tokio::runtime::Runtime,
    pub guest: PathBuf,
    pub hub: String,
    pub up: Up,
    /// What `zos up` printed once the grid was up.
    pub printed: Vec<String>,
}

/// Starts the grid for `test` (`extra`: more `zos up` arguments), or returns None after a loud
/// SKIP: without root, /dev/net/tun, `ip` or one of `tools`, while another local grid runs, or
/// without the guest. A dead grid's namespaces are removed first.
pub fn start(test: &str, tools: &[&str], extra: &[&str]) -> Option<VmGrid> {
    if !is_root() || zos_network::network_support().is_err() {
        eprintln!("SKIP: {test}: needs root, /dev/net/tun and ip");
        return None;
    }
    for tool in tools {
        if !has(tool) {
            eprintln!("SKIP: {test}: {tool} missing");
            return None;
        }
    }
    if !grid_namespaces().is_empty() {
        if local_grid_running() {
            eprintln!("SKIP: {test}: another local grid is running");
            return None;
        }
        for ns in grid_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let guest = rt.block_on(crate::vm_guest::guest(test))?;
    let hub = free_port().to_string();
    let mut args = vec!["--vm-guest", guest.to_str().unwrap(), "--hub-port", &hub];
    args.extend_from_slice(extra);
    let (up, printed) = Up::start(2, &args, Duration::from_secs(180));
    Some(VmGrid {
        rt,
        guest,
        hub,
        up,
        printed,
    })
}

/// The stdout of a command that must have succeeded (`what` names it when it did not).
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `zos vm logs CONTRACT NAME` until it holds the line `want` (a whole line: the console
/// also echoes the entrypoint's text).
pub fn wait_log(up: &Up, contract: u64, name: &str, want: &str, within: Duration) -> String {
    let end = Instant::now() + within;
    loop {
        let o = up.client(&["vm", "logs", &contract.to_string(), name]);
        let log = String::from_utf8_lossy(&o.stdout).into_owned();
        if log.lines().any(|l| l.trim() == want) {
            return log;
        }
        assert!(
            Instant::now() < end,
            "vm {name} (contract {contract}): no {want:?} within {within:?}: {log}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// QEMU processes of this grid.
pub fn guests(up: &Up) -> Vec<u32> {
    pids_with(up.data().as_os_str().as_encoded_bytes())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .starts_with("qemu")
        })
        .collect()
}
