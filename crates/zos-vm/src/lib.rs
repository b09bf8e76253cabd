//! Virtual machines for zos: the `zmachine` and `zmachine-light` primitives on QEMU.
//!
//! Upstream runs cloud-hypervisor; here the hypervisor is `qemu-system-x86_64` with KVM when a
//! probe guest boots under it and TCG otherwise ([`hypervisor`]). Container-mode machines boot
//! the cloud-container kernel with the flist as a writable overlay shared over virtio-fs (9p without a virtiofsd)
//! ([`primitive`]); QEMU processes outlive the agent and are re-attached, restarted after a
//! crash (at most 4 times in 2 minutes) and paused/resumed over QMP ([`supervisor`], [`qmp`]);
//! the serial console is logged with rotation ([`console`]); cloud-init is a NoCloud `cidata`
//! disk made in Rust ([`cloudinit`]). See docs/vm.md.
#![forbid(unsafe_code)]

pub mod cloudinit;
pub mod console;
pub mod hypervisor;
pub mod primitive;
pub mod qmp;
pub mod supervisor;

pub use hypervisor::Hypervisor;
pub use primitive::{VmConfig, Vms, ZMachinePrimitive, register};
pub use supervisor::{ConsoleAt, Launch, Started, Supervisor, SupervisorConfig, VmError};
