//! Which accelerator QEMU uses: KVM when a probe guest boots under it, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: a PVM-only KVM (as on the build hosts) accepts
//! `-accel kvm` and then fails on an ordinary guest. So the node boots the cloud-container
//! kernel with `zos.probe` (its init prints `ZOS-PROBE-OK` and powers off) under KVM, with a
//! short timeout, and falls back to TCG.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// The accelerator and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hypervisor {
    /// Always `qemu`.
    pub hypervisor: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why.
    pub reason: String,
}

impl Hypervisor {
    /// TCG because of `reason`.
    pub fn tcg(reason: impl Into<String>) -> Hypervisor {
        Hypervisor {
            hypervisor: "qemu".into(),
            accel: "tcg".into(),
            reason: reason.into(),
        }
    }
}

/// Probes KVM with the kernel and initrd of `cloud_container` (a directory with `vmlinux`
/// and `initrd.img`).
pub async fn probe(qemu: &Path, cloud_container: Option<&Path>, timeout: Duration) -> Hypervisor {
    if !Path::new("/dev/kvm").exists() {
        return Hypervisor::tcg("no /dev/kvm");
    }
    let Some(cc) = cloud_container else {
        return Hypervisor::tcg("no probe guest (cloud-container kernel) configured");
    };
    let run = tokio::process::Command::new(qemu)
        .args([
            "-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", "1", "-M", "pc",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-net",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(cc.join("vmlinux"))
        .arg("-initrd")
        .arg(cc.join("initrd.img"))
        .args(["-append", "console=ttyS0 panic=-1 quiet zos.probe"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Hypervisor::tcg(format!(
            "probe guest did not finish under kvm within {timeout:?}"
        )),
        Ok(Err(e)) => Hypervisor::tcg(format!("probe: {e}")),
        Ok(Ok(out)) if String::from_utf8_lossy(&out.stdout).contains("ZOS-PROBE-OK") => {
            Hypervisor {
                hypervisor: "qemu".into(),
                accel: "kvm".into(),
                reason: "probe guest booted under kvm".into(),
            }
        }
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or("no output");
            Hypervisor::tcg(format!("probe guest failed under kvm: {first}"))
        }
    }
}
